"""precision="auto": the decision with fake timings (a fake clock, never the real one), its cache and key,
and extract() end to end on a faked bf16 CPU, so the bf16 code path runs on every machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastfeat
from fastfeat import precision as P
from fastfeat import precision_auto as A
from fastfeat.store import open_store


class FakeClock:
    """A clock that only moves when a fake extractor runs (or a build is charged)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def fake_builder(clock, behaviour, built, build_cost=0.0):
    """precision -> fn(batch): advances ``clock`` by ``delay`` per call (plus ``trace`` on the first)
    and returns batch * scale (with an inf if ``overflow``)."""

    def build(precision):
        built.append(precision)
        clock.t += build_cost
        spec = behaviour[precision]
        if isinstance(spec, Exception):
            raise spec
        delay, scale, overflow = spec
        state = {"calls": 0}

        def fn(batch):
            clock.t += delay * len(batch) + (0.5 if state["calls"] == 0 else 0.0)  # the first call traces
            state["calls"] += 1
            out = batch * scale
            if overflow:
                out = out.copy()
                out[0, 0] = np.inf
            return {"feat": out}

        return fn

    return build


PROBE = np.ones((4, 3), np.float32)
LONG_JOB = 100_000  # rows: measuring is always within budget


def decide(behaviour, candidates, rows_total=LONG_JOB, **kwargs):
    clock, built = FakeClock(), []
    build = fake_builder(clock, behaviour, built)
    return A.decide_precision(build, PROBE, candidates, rows_total, clock=clock, **kwargs), built


def test_keeps_the_fastest_accurate_candidate():
    behaviour = {
        "float32": (0.03, 1.0, False),
        "mixed_bfloat16": (0.01, 1.01, False),  # 3x faster, error 1e-2: kept
        "mixed_float16": (0.005, 1.5, False),  # fastest but error 0.5: rejected
    }
    choice, built = decide(behaviour, ["float32", "mixed_float16", "mixed_bfloat16"])
    assert choice.choice == "mixed_bfloat16" and choice.source == "measured"
    assert choice.candidates == ["float32", "mixed_float16", "mixed_bfloat16"]
    assert choice.errors["mixed_bfloat16"] == pytest.approx(0.01, rel=1e-4)
    assert "tolerance" in choice.rejected["mixed_float16"]
    assert choice.images_per_second["mixed_bfloat16"] == pytest.approx(100.0)
    assert choice.images_per_second["float32"] == pytest.approx(1 / 0.03)
    assert np.asarray(choice.extractor(PROBE)["feat"]).max() == pytest.approx(1.01)
    assert choice.rounds == 1  # 3x is decisive at once
    meta = choice.to_meta()
    assert meta["choice"] == "mixed_bfloat16" and meta["probe_rows"] == 4 and "extractor" not in meta
    json.dumps(meta)
    assert A.PrecisionChoice.from_meta(json.loads(json.dumps(meta))).to_meta() == meta


def test_rejects_overflow_and_needs_a_real_speedup():
    behaviour = {
        "float32": (0.02, 1.0, False),
        "mixed_float16": (0.002, 1.0, True),  # inf: loss of range
        "mixed_bfloat16": (0.0195, 1.0, False),  # 1.03x: not worth it, float32 stays
    }
    choice, _ = decide(behaviour, ["mixed_float16", "mixed_bfloat16"])
    assert choice.choice == "float32" and choice.source == "measured"
    assert "non-finite" in choice.rejected["mixed_float16"]
    assert choice.errors["mixed_float16"] == float("inf")
    assert json.loads(json.dumps(choice.to_meta()))["errors"]["mixed_float16"] is None
    assert "mixed_bfloat16" not in choice.rejected
    assert choice.rounds == A.MAX_ROUNDS  # a close call is timed again while the budget allows
    assert "float32" in choice.summary()


def test_a_short_job_keeps_float32_without_measuring():
    behaviour = {"float32": (0.03, 1.0, False), "mixed_bfloat16": (0.01, 1.0, False)}
    choice, built = decide(behaviour, ["mixed_bfloat16"], rows_total=40)  # ~1.2 s of work: 5% pays for nothing
    assert choice.choice == "float32" and choice.source == "skipped"
    assert built == ["float32"]  # the candidate was never built
    assert "too short" in choice.rejected["mixed_bfloat16"] and "too short" in choice.reason
    assert choice.estimated_job_seconds == pytest.approx(40 * 0.03)


def test_a_tiny_job_is_not_even_timed():
    behaviour = {"float32": (0.03, 1.0, False), "mixed_bfloat16": (0.01, 1.0, False)}
    clock, built = FakeClock(), []
    choice = A.decide_precision(fake_builder(clock, behaviour, built), PROBE, ["mixed_bfloat16"], 10,
                                build_seconds=5.0, clock=clock)  # fmt: skip
    assert choice.source == "skipped" and built == ["float32"]
    assert clock.t == pytest.approx(0.5 + 0.03 * len(PROBE))  # the tracing call alone, which the run needs anyway


def test_measuring_costs_at_most_the_budget():
    behaviour = {"float32": (0.03, 1.0, False), "mixed_bfloat16": (0.029, 1.0, False)}  # close: more rounds
    rows = 4_000  # 120 s of float32 work: 6 s to spend
    clock, built = FakeClock(), []
    build = fake_builder(clock, behaviour, built)
    choice = A.decide_precision(build, PROBE, ["mixed_bfloat16"], rows, clock=clock)
    assert choice.source == "measured"
    assert choice.seconds <= A.AUTO_BUDGET * rows * 0.03 + 1e-9
    assert choice.choice == "float32"


def test_remeasure_ignores_the_budget_and_times_several_rounds():
    behaviour = {"float32": (0.03, 1.0, False), "mixed_bfloat16": (0.01, 1.0, False)}
    choice, built = decide(behaviour, ["mixed_bfloat16"], rows_total=40, remeasure=True)
    assert choice.choice == "mixed_bfloat16" and choice.source == "measured"
    assert choice.rounds >= A.DECISIVE_ROUNDS


def test_one_candidate_measures_nothing():
    clock, built = FakeClock(), []
    choice = A.decide_precision(fake_builder(clock, {"float32": (1.0, 1.0, False)}, built), PROBE, ["float32"], 10,
                                clock=clock)  # fmt: skip
    assert choice.choice == "float32" and choice.source == "native" and built == ["float32"]
    assert clock.t == 0.0 and choice.images_per_second == {}


def test_a_failed_build_is_recorded():
    behaviour = {"float32": (0.03, 1.0, False), "mixed_bfloat16": ValueError("cannot rebuild")}
    choice, _ = decide(behaviour, ["mixed_bfloat16"])
    assert choice.choice == "float32" and "cannot rebuild" in choice.rejected["mixed_bfloat16"]
    assert choice.source == "measured"


def test_decide_validates():
    behaviour = {"float32": (0.0, 1.0, False)}
    with pytest.raises(ValueError, match=r"Received: precision='fp8'"):
        decide(behaviour, ["fp8"])
    with pytest.raises(ValueError, match=r"Received: probe shape=\(0, 3\)"):
        A.decide_precision(fake_builder(FakeClock(), behaviour, []), PROBE[:0], ["float32"], 1)
    with pytest.raises(ValueError, match=r"Received: tolerance=0"):
        decide(behaviour, ["float32"], tolerance=0)


def test_probe_rows():
    assert A.probe_rows(32, "cpu") == A.CPU_PROBE_ROWS
    assert A.probe_rows(2, "cpu") == 2
    assert A.probe_rows(256, "gpu") == 256
    assert A.probe_rows(32, "cpu", remeasure=True) == 32


# -- the key and the cache ---------------------------------------------------------------------------
ZEN3 = frozenset({"avx2", "fma", "sse4_2"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})


def key_for(flags, **changes):
    args = dict(
        machine=A.machine_id("cpu", flags=flags), model="vgg19", layers=["block4_conv2"], image_size=(224, 224),
        batch_size=None, versions={"tensorflow": "2.21.0", "keras": "3.12.0"},
    )  # fmt: skip
    args.update(changes)
    return A.decision_key(**args)


def test_the_key_separates_what_decides():
    base = A.key_digest(key_for(SAPPHIRE_RAPIDS))
    assert A.key_digest(key_for(SAPPHIRE_RAPIDS)) == base
    assert A.key_digest(key_for(SAPPHIRE_RAPIDS | {"sse3"})) == base  # flags that do not matter
    for other in (
        key_for(ZEN3), key_for(SAPPHIRE_RAPIDS, model="mobilenetv2"), key_for(SAPPHIRE_RAPIDS, layers=["block5_pool"]),
        key_for(SAPPHIRE_RAPIDS, image_size=(160, 160)), key_for(SAPPHIRE_RAPIDS, batch_size=16),
        key_for(SAPPHIRE_RAPIDS, versions={"tensorflow": "2.22.0", "keras": "3.12.0"}),
    ):  # fmt: skip
        assert A.key_digest(other) != base
    gpu = A.machine_id("gpu", "NVIDIA H200", (9, 0))
    assert gpu == {"kind": "gpu", "name": "NVIDIA H200", "compute_capability": [9, 0]}


def test_model_id_of_a_file_changes_with_the_file(tmp_path):
    f = tmp_path / "m.keras"
    f.write_bytes(b"x")
    first = A.model_id(str(f))
    f.write_bytes(b"xy")
    assert A.model_id(str(f)) != first and A.model_id("vgg19") == "vgg19"


def test_cache_round_trip_and_damage(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "precision.json"
    cache = A.DecisionCache(str(path))
    key = key_for(SAPPHIRE_RAPIDS)
    assert A.cached_choice(cache, key) is None
    choice = A.PrecisionChoice(choice="mixed_bfloat16", source="measured", candidates=["float32", "mixed_bfloat16"],
                               images_per_second={"float32": 6.0, "mixed_bfloat16": 40.0}, measured_at="now")  # fmt: skip
    assert cache.put(A.key_digest(key), key, choice)
    again = A.cached_choice(A.DecisionCache(str(path)), key)
    assert again.choice == "mixed_bfloat16" and again.source == "cached" and again.key == A.key_digest(key)
    assert "reused" in again.reason and again.images_per_second["mixed_bfloat16"] == 40.0
    assert A.cached_choice(cache, key_for(ZEN3)) is None
    for damage in (b"{not json", b"[]", json.dumps({"version": 1, "decisions": {A.key_digest(key): {"choice": {
            "choice": "fp8"}}}}).encode()):  # fmt: skip
        path.write_bytes(damage)
        assert A.cached_choice(cache, key) is None  # damaged: read as empty, measured again
    assert cache.put(A.key_digest(key), key, choice)  # and overwritten
    monkeypatch.setenv("FASTFEAT_PRECISION_CACHE", "0")
    assert A.cached_choice(A.DecisionCache(str(path)), key) is None
    assert not A.DecisionCache(str(path)).put("x", key, choice)


def test_an_unwritable_cache_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = A.DecisionCache(str(blocker / "precision.json"))  # its folder is a file
    choice = A.PrecisionChoice(choice="float32", source="measured", candidates=["float32"])
    assert cache.put("k", {}, choice) is False


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTFEAT_CACHE_DIR", str(tmp_path / "a"))
    assert A.default_cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("FASTFEAT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert A.default_cache_dir() == str(tmp_path / "xdg" / "fastfeat")


# -- extract() on a faked bf16 CPU: the bf16 path runs on every machine ----------------------------------
@pytest.fixture
def bf16_cpu(monkeypatch, tmp_path):
    """This CPU claims AVX512_BF16 (TensorFlow emulates bf16 where it is not native: slower, still exact
    enough), and the decision cache is a folder of this test's own. The runs pin device="cpu", so a GPU
    machine takes the same path."""
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setenv("FASTFEAT_CACHE_DIR", str(tmp_path / "cache"))
    return A.DecisionCache()


def _features(path, key="conv2"):
    with open_store(path) as s:
        return np.asarray(s.features(key)[:]), dict(s.meta)


def test_auto_on_a_bf16_cpu_measures_once_then_reuses(class_tree, tiny_model_file, tmp_path, bf16_cpu):
    root, expected = class_tree
    kwargs = dict(model=tiny_model_file, layers=["conv2"], batch_size=4, device="cpu", progress=False)
    first = fastfeat.extract(root, tmp_path / "1.h5", remeasure_precision=True, **kwargs)
    auto = first.precision_auto
    assert auto["source"] == "measured" and auto["candidates"] == ["float32", "mixed_bfloat16"]
    assert set(auto["errors"]) == {"float32", "mixed_bfloat16"} and auto["errors"]["mixed_bfloat16"] <= 2e-2
    assert auto["probe_rows"] == 4 and auto["rounds"] >= A.DECISIVE_ROUNDS  # remeasure: the whole first batch
    assert first.precision == auto["choice"] and "cached" in auto["reason"]
    assert {"catalog", "model_build", "precision", "first_batch"} <= set(first.startup)
    assert "start-up" in first.summary() and "measured" in first.summary()
    f1, meta1 = _features(tmp_path / "1.h5")
    assert meta1["precision"] == first.precision and meta1["precision_auto"]["source"] == "measured"
    assert f1.shape[0] == len(expected)

    second = fastfeat.extract(root, tmp_path / "2.h5", **kwargs)  # same command: the cached decision
    assert second.precision == first.precision and second.precision_auto["source"] == "cached"
    assert "precision" not in second.startup  # nothing measured
    f2, meta2 = _features(tmp_path / "2.h5")
    np.testing.assert_array_equal(f1, f2)  # bitwise: the same precision, the same features
    assert meta2["precision_auto"]["key"] == meta1["precision_auto"]["key"]


@pytest.mark.parametrize("which", ["model file", "registry"])
def test_a_cached_bf16_decision_builds_bf16_directly(class_tree, tiny_model_file, tmp_path, bf16_cpu, monkeypatch,
                                                     which):  # fmt: skip
    """A reused decision gives the features of a forced run at that precision, bit for bit, and so does the
    run that measured it (its model rebuilt under bf16 from the float32 one)."""
    root, _ = class_tree
    if which == "model file":
        kwargs = dict(model=tiny_model_file, layers=["conv2"], batch_size=4, device="cpu", progress=False)
    else:  # built by its keras.applications constructor under the policy, random init seeded
        kwargs = dict(model="mobilenetv2", weights=None, image_size=32, layers=["block_3_expand_relu"], batch_size=4, device="cpu",
                      progress=False)  # fmt: skip
    real_decide = A.decide_precision
    # the measurement keeps bf16 whatever this machine's timing says (that is not what this test is about)
    monkeypatch.setattr(A, "decide_precision", lambda *a, **k: real_decide(*a, **{**k, "min_speedup": 0.0}))
    measured = fastfeat.extract(root, tmp_path / "m.h5", remeasure_precision=True, **kwargs)
    assert measured.precision == "mixed_bfloat16" and measured.precision_auto["source"] == "measured"
    cached = fastfeat.extract(root, tmp_path / "c.h5", **kwargs)
    assert cached.precision_auto["source"] == "cached" and cached.precision == "mixed_bfloat16"
    forced = fastfeat.extract(root, tmp_path / "f.h5", precision="mixed_bfloat16", **kwargs)
    assert forced.precision_auto is None
    key = kwargs["layers"][0]
    fm, _ = _features(tmp_path / "m.h5", key)
    fc, _ = _features(tmp_path / "c.h5", key)
    ff, _ = _features(tmp_path / "f.h5", key)
    np.testing.assert_array_equal(fc, ff)
    np.testing.assert_array_equal(fm, ff)


def test_auto_on_a_bf16_cpu_skips_measuring_a_short_job(class_tree, tiny_model_file, tmp_path, bf16_cpu, monkeypatch):
    monkeypatch.setattr(A, "AUTO_BUDGET", 0.0)  # nothing is worth measuring
    root, _ = class_tree
    report = fastfeat.extract(root, tmp_path / "s.h5", model=tiny_model_file, layers=["conv2"], batch_size=4,
                              device="cpu", progress=False)  # fmt: skip
    assert report.precision == "float32" and report.precision_auto["source"] == "skipped"
    assert "too short" in report.precision_auto["reason"]
    key = report.precision_auto["key"]
    assert key and bf16_cpu.get(key) is None  # nothing measured, nothing cached


def test_auto_where_float32_is_the_only_native_precision(class_tree, tiny_model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": frozenset({"avx2", "fma"}))  # a Zen 3
    root, _ = class_tree
    report = fastfeat.extract(root, tmp_path / "z.h5", model=tiny_model_file, layers=["conv2"], batch_size=4,
                              device="cpu", progress=False)  # fmt: skip
    assert report.precision == "float32" and report.precision_auto["source"] == "native"
    assert "precision" not in report.startup
    _, meta = _features(tmp_path / "z.h5")
    assert meta["precision_auto"]["source"] == "native" and meta["precision_requested"] == "auto"
