"""Scatter training data (jaxdrr.training.scatter_data2): determinism, resumability, noise bookkeeping.

Tiny samples: a 24 x 16 x 16 CT of 20 mm voxels and 2048-history chunks, so one sample is seconds
after compilation. Determinism is exact (the same program on the same keys); the recorded noise
floor is recomputed from the stored halves in float64, so it matches to float32 rounding of the
stored images (1e-5 relative).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdrr.training import scatter_data, scatter_data2

TINY = dict(shape=(24, 16, 16), spacing_mm=20.0, chunk=2048)


def test_sample_spec_deterministic_and_ranges():
    a = scatter_data2.sample_spec(0, "train", 7)
    assert a == scatter_data2.sample_spec(0, "train", 7)
    assert a != scatter_data2.sample_spec(0, "train", 8)
    assert a != scatter_data2.sample_spec(0, "test", 7)
    assert a != scatter_data2.sample_spec(1, "train", 7)
    specs = [scatter_data2.sample_spec(0, "train", i) for i in range(300)]
    assert all(s["ct_seed"] != 0 for s in specs)  # the built-in CTs (seed 0) stay out
    assert {s["family"] for s in specs} == {"anatomy", "synthetic"}
    assert {s["region"] for s in specs if s["family"] == "anatomy"} == set(scatter_data2.ANATOMY_REGIONS)
    lao = np.array([s["lao"] for s in specs])
    assert np.all(np.abs(lao) <= 90) and np.mean(np.abs(lao) >= 75) > 0.2  # laterals are common
    assert all(abs(s["cran"]) <= 45 and 60 <= s["kvp"] <= 120 and 900 <= s["sdd_mm"] <= 1300 for s in specs)
    sizes = [s["size"] for s in specs]
    assert min(sizes) < 0.65 and max(sizes) > 1.2  # children to large adults
    assert not any(s["csi"] for s in specs)
    assert any(scatter_data2.sample_spec(0, "train", i, csi_probability=0.5)["csi"] for i in range(20))


def test_noise_floor():
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 2, (8, 8))
    t = np.zeros((8, 8))
    assert scatter_data2.noise_floor(a, a, t) == 0.0
    b = a * 1.1  # every 4x4 bin differs by 10 %: |a - b| / (a + b) = 0.1 / 2.1
    assert scatter_data2.noise_floor(a, b, t) == pytest.approx(0.1 / 2.1, rel=1e-12)
    b2 = b.copy()
    b2[:4, :4] = a[:4, :4]  # a bin outside the shadow is ignored
    t2 = np.zeros((8, 8))
    t2[:4, :4] = 1.0
    assert scatter_data2.noise_floor(a, b2, t2) == pytest.approx(0.1 / 2.1, rel=1e-12)


def test_generate_deterministic_resumable_and_logged(tmp_path):
    # target 1.0: stops at the first check (one chunk per half)
    recs = scatter_data2.generate(tmp_path / "a", "test", 0, 1, target=1.0, **TINY)
    assert len(recs) == 1 and recs[0]["histories"] == 2 * TINY["chunk"]
    assert recs[0]["checks"] == [[2 * TINY["chunk"], recs[0]["noise_floor"]]]
    for key in ("cpu_s", "wall_s", "noise_floor", "family", "region", "lao", "kvp"):
        assert key in recs[0]
    log = (tmp_path / "a" / "log.jsonl").read_text()
    # resumable: a second call skips the finished sample and logs nothing
    assert scatter_data2.generate(tmp_path / "a", "test", 0, 1, target=1.0, **TINY) == []
    assert (tmp_path / "a" / "log.jsonl").read_text() == log
    # deterministic per (seed, index)
    scatter_data2.generate(tmp_path / "b", "test", 0, 1, target=1.0, **TINY)
    fa, fb = (np.load(tmp_path / d / "test" / "00000.npz") for d in ("a", "b"))
    assert sorted(fa.files) == sorted(fb.files)
    for k in fa.files:
        np.testing.assert_array_equal(fa[k], fb[k])
    # noise bookkeeping: the floor is that of the stored halves, s their mean
    floor = max(
        scatter_data2.noise_floor(fa["s_a"][..., r], fa["s_b"][..., r], fa["low"][..., r]) for r in (0, 1)
    )
    assert float(fa["noise_floor"]) == pytest.approx(floor, rel=1e-5)
    assert recs[0]["noise_floor"] == pytest.approx(floor, rel=1e-3, abs=1e-5)
    np.testing.assert_allclose(fa["s"], (fa["s_a"] + fa["s_b"]) / 2, rtol=1e-6)
    assert float(fa["s"].mean()) > 0
    meta = json.loads(str(fa["meta"]))
    assert meta["histories"] == int(fa["photons"]) == 2 * TINY["chunk"]
    # target 0: runs to the cap (an unreachable floor is logged, not hidden)
    recs = scatter_data2.generate(
        tmp_path / "c", "test", 0, 1, target=0.0, max_histories=3 * 2 * 2048, **TINY
    )
    assert recs[0]["histories"] == 3 * 2 * 2048 and recs[0]["noise_floor"] > 0
    assert [c[0] for c in recs[0]["checks"]] == [2 * 2048, 3 * 2 * 2048]  # growth capped at 3x
    assert recs[0]["noise_floor"] < floor  # more histories, less noise (3x: ~1/sqrt(3))
    # the old loader and train_scatter read the new samples
    data = scatter_data.load(tmp_path / "a", "test")
    assert data["s"].shape == (1, 32, 32, 2) and "s_a" in data and data["meta"][0]["index"] == 0
