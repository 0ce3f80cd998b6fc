"""A probe over a store larger than the memory it may use streams minibatches: its peak of NumPy
allocations (tracemalloc, which NumPy reports to; memory-mapped store pages are not allocations)
stays a fraction of the store, while the in-memory path, measured the same way, exceeds it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("sklearn")

import fastfeat  # noqa: E402

from _probe_data import write_cluster_store  # noqa: E402

ROWS, WIDTH = 8000, 2048  # 62.5 MiB of float32 features


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, ROWS)
    centres = rng.normal(size=(3, WIDTH)).astype(np.float32) * 0.2
    X = centres[y] + rng.normal(size=(ROWS, WIDTH)).astype(np.float32)
    return write_cluster_store(tmp_path_factory.mktemp("big") / "big.h5", X, y, batch=1000)


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_probe_over_the_budget_streams_in_bounded_memory(big_store):
    store_bytes = ROWS * WIDTH * 4
    reports = []

    def streamed():
        reports.append(fastfeat.probe(big_store, classifier="logistic", max_memory="8M", sweep=[1e-3], epochs=2,
                                      bootstrap=0))  # fmt: skip

    streamed()  # once untraced: the imports it triggers (scipy, sklearn modules) are allocations too
    peak = peak_bytes(streamed)
    report = reports[-1]
    assert report.mode == "stream"
    assert report.metrics["accuracy"] > 0.8  # it learned (chance 1/3)
    assert peak < store_bytes / 4, f"peak {peak / 2**20:.1f} MiB for a {store_bytes / 2**20:.0f} MiB store"

    def in_memory():  # the instrument sees a whole copy: the path it avoids is over the budget
        fastfeat.probe(big_store, classifier="logistic", sweep=[1e-3], bootstrap=0, options={"max_iter": 2})

    assert peak_bytes(in_memory) > store_bytes * 0.75


def test_svm_over_the_budget_streams_with_probabilities(big_store):
    report = fastfeat.probe(big_store, classifier="svm", max_memory="8M", sweep=[1e-3], epochs=1, bootstrap=0)
    assert report.mode == "stream" and report.classifier.params["link"] == "modified_huber"
    assert report.metrics["accuracy"] > 0.8
