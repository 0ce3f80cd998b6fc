"""The Ray engine on a real local Ray cluster of three nodes on this machine (every address on
127.0.0.1, fake GPUs on two of them): a worker killed with SIGKILL mid-shard and a node removed
mid-job; the job completes and ``open_store(OUT)`` (and ``merge``) equal a single-machine run
bitwise, with no row missing or written twice. One cluster for the module (Ray is heavy here)."""

from __future__ import annotations

import os
import threading
import time

# before Ray is imported: keep every address on 127.0.0.1, send no usage statistics
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ray = pytest.importorskip("ray")

from fastfeat.engines.ray_engine import TEST_HOOK, default_shards, plan_resources, run_ray  # noqa: E402
from fastfeat.store import merge_stores, open_store  # noqa: E402
from fastfeat.store.sharded import read_manifest  # noqa: E402

N_IMAGES = 24
SETTINGS = dict(layers=["conv1", "conv3:avg"], batch_size=2, precision="float32", progress=False)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                       "resources": {"head": 1}})  # fmt: skip
    gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    try:
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        yield c, gpu_nodes
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import write_image

    root = tmp_path_factory.mktemp("ray") / "images"
    for i in range(N_IMAGES):
        write_image(root / f"class_{i % 3}" / f"{i:03d}.png", i, size=(30 + i % 5, 34))
    (root / "class_2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.fixture(scope="module")
def reference(folder, tiny_model_file, tmp_path_factory):
    """The single-machine run of the same job."""
    import fastfeat

    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    fastfeat.extract(folder, out, model=tiny_model_file, **SETTINGS)
    return out


def _assert_equal_to_reference(store, reference):
    with open_store(reference) as ref:
        assert store.complete and len(store) == len(ref) == N_IMAGES
        assert store.paths == ref.paths and store.class_names == ref.class_names
        assert store.failures == ref.failures and len(ref.failures) == 1
        for name in ("labels", "index", "copies", "failure_index"):
            np.testing.assert_array_equal(getattr(store, name), getattr(ref, name), err_msg=name)
        assert sorted(set(store.index.tolist())) == store.index.tolist()  # no duplicate, in order
        for layer in ref.layers:
            assert np.array_equal(np.asarray(store.features(layer)), np.asarray(ref.features(layer))), layer


def test_resources_and_default_shards():
    nodes = [{"CPU": 1.0, "head": 1.0}, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}]
    res = plan_resources(nodes)
    assert (res.cpus, res.gpus, res.slots) == (4.0, 1.0, 4)  # one shard per GPU, the node's CPUs per GPU
    assert plan_resources([{"CPU": 4.0}, {"CPU": 2.0}]).slots == 3  # a CPU cluster: one node's CPUs per shard
    assert default_shards(4, 1000) == 16 and default_shards(4, 5) == 5  # more shards than slots
    with pytest.raises(ValueError, match="gpus_per_shard"):
        plan_resources(nodes, gpus_per_shard=3)


def test_worker_killed_mid_shard_is_retried_and_resumes(cluster, folder, tiny_model_file, reference, tmp_path,
                                                        monkeypatch):  # fmt: skip
    c, gpu_nodes = cluster
    out = tmp_path / "out"
    monkeypatch.setenv(TEST_HOOK, "kill:1:2")  # shard 1's worker dies once 2 of its rows are committed
    report = run_ray(folder, out, 4, model=tiny_model_file, gpus_per_shard=1, cpus_per_shard=1, **SETTINGS)
    assert report.complete and report.retries >= 1 and report.engine == "ray"
    killed_at = int((out / ".hooked-1").read_text())
    shard = read_manifest(out)["shard_list"][1]
    assert 0 < killed_at < shard["stop"] - shard["start"] and shard["attempts"] == 2
    assert shard["resumed_from"] >= killed_at  # the retry resumed the shard's store
    gpu_ids = {n.node_id for n in gpu_nodes}
    for entry in read_manifest(out)["shard_list"]:  # one fake GPU per shard, on the GPU nodes only
        assert entry["status"] == "complete" and entry["gpu_ids"] == ["0"] and entry["ray_node"] in gpu_ids
    with open_store(out) as view:
        _assert_equal_to_reference(view, reference)
    merge_stores([out], tmp_path / "one.h5")
    with open_store(tmp_path / "one.h5") as one:
        _assert_equal_to_reference(one, reference)


def test_cli_engine_ray_decides_the_batch_size_once(cluster, folder, tiny_model_file, tmp_path):
    from fastfeat.cli import main

    out = tmp_path / "out"
    argv = ["extract", str(folder), "-o", str(out), "--model", tiny_model_file, "--layer", "conv1", "--layer",
            "conv3:avg", "--precision", "float32", "--shards", "3", "--engine", "ray", "--gpus-per-shard", "0",
            "--cpus-per-shard", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0  # three tasks at once on the three nodes; the first to start decides
    settings = read_manifest(out)["settings"]
    assert settings["decided_by"].startswith("shard ") and settings["precision"] == "float32"
    with open_store(out) as view:
        assert view.complete and len(view) == N_IMAGES and np.unique(view.index).size == N_IMAGES
        assert {s.meta["batch_size"] for s in view.shards} == {settings["batch_size"]}


def test_node_removed_mid_job(cluster, folder, tiny_model_file, reference, tmp_path, monkeypatch):
    c, gpu_nodes = cluster
    out = tmp_path / "out"
    monkeypatch.setenv(TEST_HOOK, "hold:2:2:120")  # shard 2 stops mid-way (2 rows committed) on its node
    result = {}

    def job():
        try:
            result["report"] = run_ray(folder, out, 4, model=tiny_model_file, gpus_per_shard=1, cpus_per_shard=1,
                                       max_retries=4, **SETTINGS)  # fmt: skip
        except BaseException as e:  # noqa: BLE001 -- re-raised in the test thread
            result["error"] = e

    driver = threading.Thread(target=job)
    driver.start()
    deadline = time.monotonic() + 180
    while not (out / ".hooked-2").exists() and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / ".hooked-2").exists(), result.get("error")
    held_on = read_manifest(out)["shard_list"][2]["ray_node"]
    victim = next(n for n in gpu_nodes if n.node_id == held_on)
    c.remove_node(victim)  # the node dies with shard 2 half done
    driver.join(timeout=300)
    assert not driver.is_alive() and "error" not in result, result.get("error")
    report = result["report"]
    assert report.complete and report.retries >= 1
    entries = read_manifest(out)["shard_list"]
    assert entries[2]["attempts"] == 2 and entries[2]["resumed_from"] >= 2
    assert entries[2]["ray_node"] != held_on and entries[2]["ray_node"] in {n.node_id for n in gpu_nodes}
    with open_store(out) as view:
        _assert_equal_to_reference(view, reference)
