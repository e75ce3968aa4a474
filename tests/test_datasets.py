"""jaxdrr.datasets: spec validation, per-sample determinism, annotations against independent
references, atomic/resumable shards (SIGKILL + resume), failures, and 2 processes == 1 process."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrr
from jaxdrr import datasets as D
from jaxdrr.datasets import store
from jaxdrr.geometry import carm
from jaxdrr.geometry.carm import CArmGeometry

EPS32 = float(np.finfo(np.float32).eps)

SMALL = """
name = "tiny"
seed = 7
images_per_ct = {images}

[[ct]]
phantom = "analytic"
shape = [40, 32, 28]
landmarks = "builtin"
labels = "builtin"

[detector]
height = 40
width = 48
pixel_mm = [7.0, 8.5]

[pose]
lao_deg = [-60, 60]
cran_deg = [-30, 30]
isocenter_jitter_mm = [10, 10, 5]
sdd_mm = [950, 1200]
sid_mm = [600, 750]

[physics]
kvp = [60, 90, 120]
photons_per_pixel = [1e4, 1e5]
scatter_probability = {scatter}
noise = true
density_scale = {{ bone = [0.9, 1.1] }}

[annotations]
heatmaps = true
heatmap_sigma_px = 1.5
masks = true
path_lengths = true
line_integrals = {line_integrals}

[output]
shard_size = {shard}
batch_size = {batch}
coco = true
"""


def write_spec(
    path: Path, images=8, shard=4, batch=4, scatter=0.5, line_integrals="true", noise="true"
) -> Path:
    text = SMALL.format(
        images=images, shard=shard, batch=batch, scatter=scatter, line_integrals=line_integrals
    )
    path.write_text(text.replace("noise = true", f"noise = {noise}"))
    return path


def start_cli(*args, env=None, **popen_kwargs) -> subprocess.Popen:
    """Starts ``python -m jaxdrr ARGS`` in a subprocess (a fresh JAX process)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "jaxdrr", *map(str, args)], env=env, **popen_kwargs)


def cli(*args, check=True, env=None):
    """Runs ``python -m jaxdrr ARGS`` to completion; returns the CompletedProcess-like result."""
    proc = start_cli(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"jaxdrr {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr_text[-3000:]}"
        )
    return proc


def all_samples(path) -> list[dict]:
    with D.open(path) as ds:
        return [ds[i] for i in range(len(ds))]


def assert_identical(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            va, vb = np.asarray(sa[k]), np.asarray(sb[k])
            assert va.dtype == vb.dtype and va.shape == vb.shape, k
            assert np.array_equal(va, vb), f"sample {sa['index']} field {k} differs"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An in-process dataset: 8 images in 2 shards, all annotations."""
    root = tmp_path_factory.mktemp("ds")
    spec = D.load_spec(write_spec(root / "spec.toml"))
    report = D.generate(spec, root / "out", progress=False)
    return spec, root / "out", report


# ----------------------------------------------------------------------------------------------
# Spec


def test_example_spec_loads(tmp_path):
    path = D.write_example_spec(tmp_path / "ex.toml")
    spec = D.load_spec(path)
    assert spec.cts[0].phantom == "analytic" and spec.detector.height == 128
    assert spec.num_samples == spec.images_per_ct
    with pytest.raises(D.SpecError, match="already exists"):
        D.write_example_spec(path)


def test_yaml_spec_equals_toml(tmp_path):
    yaml = pytest.importorskip("yaml")  # optional dependency: YAML specs need PyYAML
    import tomllib

    toml_path = write_spec(tmp_path / "s.toml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tomllib.loads(toml_path.read_text())))
    assert D.spec_digest(D.load_spec(tmp_path / "s.yaml")) == D.spec_digest(D.load_spec(toml_path))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pose": {"lao_deg": [10, -10]}}, r"pose\.lao_deg: low 10.0 > high -10.0"),
        ({"pose": {"sdd_mm": 900, "sid_mm": 950}}, r"pose\.sid_mm: .* must stay below"),
        ({"pose": {"laos": 3}}, r"pose: unknown key\(s\) laos"),
        ({"physics": {"kvp": [100]}}, r"physics\.kvp: IPEM-78 spectra are shipped for kVp \[60, 90, 120\]"),
        ({"physics": {"density_scale": {"bones": 1.0}}}, r"physics\.density_scale: unknown key\(s\) bones"),
        ({"physics": {"scatter_probability": 1.5}}, r"physics\.scatter_probability: must be <= 1"),
        ({"detector": {"height": "big"}}, r"detector\.height: expected a number"),
        ({"ct": []}, r"ct: give at least one CT"),
        ({"ct": [{"path": "a.nii", "phantom": "analytic"}]}, r"ct\[0\]: give exactly one of"),
        ({"ct": [{"phantom": "chest", "landmarks": "builtin"}]}, r"ct\[0\]\.landmarks: 'builtin'"),
        ({"ct": [{"phantom": "analytic"}, {"phantom": "analytic"}]}, r"CT name 'analytic-0' is used twice"),
        ({"output": {"image_dtype": "uint8"}}, r"output\.image_dtype: expected one of"),
        ({"colour": 1}, r"spec: unknown key\(s\) colour"),
    ],
)
def test_spec_errors_name_the_key(change, message):
    base = {"ct": [{"phantom": "analytic"}]}
    data = {**base, **change}
    with pytest.raises(D.SpecError, match=message):
        D.spec_from_dict(data)


def test_bad_spec_files(tmp_path):
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(D.SpecError, match="not valid TOML"):
        D.load_spec(tmp_path / "bad.toml")
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(D.SpecError, match=r"\.toml or \.yaml"):
        D.load_spec(tmp_path / "s.json")
    with pytest.raises(FileNotFoundError):
        D.load_spec(tmp_path / "missing.toml")


def test_phantom_family_expands():
    spec = D.spec_from_dict({"ct": [{"phantom": "synthetic", "seed": 3, "count": 3, "labels": "builtin"}]})
    assert [c.name for c in spec.cts] == ["synthetic-3", "synthetic-4", "synthetic-5"]
    assert [c.seed for c in spec.cts] == [3, 4, 5]


def test_plan_shards_never_span_cts():
    spec = D.spec_from_dict(
        {
            "ct": [{"phantom": "analytic", "count": 1}, {"phantom": "pelvis"}],
            "images_per_ct": 10,
            "output": {"shard_size": 4},
        }
    )
    shards = D.plan_shards(spec)
    assert [(s.ct_index, s.first_index, s.count) for s in shards] == [
        (0, 0, 4),
        (0, 4, 4),
        (0, 8, 2),
        (1, 10, 4),
        (1, 14, 4),
        (1, 18, 2),
    ]


# ----------------------------------------------------------------------------------------------
# Sampling


def test_draws_depend_only_on_the_index(tmp_path):
    spec = D.load_spec(write_spec(tmp_path / "s.toml"))
    names = ("air", "soft_tissue", "bone")
    iso = jnp.zeros(3)
    one = D.draw(spec, D.sample_key(spec.seed, 5), iso, names)
    batch = jax.jit(jax.vmap(lambda i: D.draw(spec, D.sample_key(spec.seed, i), iso, names)))(
        jnp.arange(3, 9)
    )
    # Keys, integers and booleans are exact. Float draws are ``lo + u (hi - lo)`` (u from the key's
    # bits, exact), or exp of one; jit may contract the multiply-add into an FMA and fuse differently
    # from eager, so each evaluation is within 3 float32 roundings of the exact value, each at most
    # u32 * max|term| <= u32 * magnitude: the two differ by at most 6 u32 magnitude. exp adds its own
    # error (XLA's float32 exp: a few ulps; EXP_ULPS) and scales the argument's error by the value.
    u32, exp_ulps = 2.0**-24, 4
    log_lo, log_hi = np.log(spec.physics.photons_per_pixel)
    ranges = (
        spec.pose.lao_deg,
        spec.pose.cran_deg,
        spec.pose.sdd_mm,
        spec.pose.sid_mm,
        spec.detector.pixel_mm,
    )
    ranges += (spec.pose.isocenter_jitter_mm, *dict(spec.physics.density_scale).values())
    range_bound = 2 * max(abs(float(x)) for r in ranges for x in np.ravel(r))  # |hi - lo| <= 2 max|bound|
    for k, v in one.items():
        a, b = (np.asarray(jax.random.key_data(x) if k == "noise_key" else x) for x in (v, batch[k][2]))
        if not np.issubdtype(a.dtype, np.floating) or k == "kvp":  # kvp: a table lookup, exact
            assert np.array_equal(a, b), k
        elif k == "photons_per_pixel":
            x_err = 6 * u32 * max(abs(log_lo), abs(log_hi))
            assert abs(float(a) - float(b)) <= float(a) * (x_err + 2 * exp_ulps * u32), k
        else:
            magnitude = np.abs(a).max() + range_bound  # max |term| of lo + u (hi - lo) (+ jitter)
            np.testing.assert_allclose(a, b, rtol=0, atol=6 * u32 * magnitude, err_msg=k)
    # Ranges respected.
    b = jax.vmap(lambda i: D.draw(spec, D.sample_key(spec.seed, i), iso, names))(jnp.arange(2000))
    assert np.all((b["lao_deg"] >= -60) & (b["lao_deg"] <= 60))
    assert np.all((b["photons_per_pixel"] >= 1e4 * (1 - 1e-6)) & (b["photons_per_pixel"] <= 1e5 * (1 + 1e-6)))
    assert set(np.unique(np.asarray(b["kvp"])).tolist()) == {60.0, 90.0, 120.0}
    assert np.all(np.abs(b["isocenter_mm"]) <= np.array([10, 10, 5]) * (1 + 1e-6))
    assert np.all(np.asarray(b["density_scale"])[:, :2] == 1.0)
    # Scatter drawn with probability 0.5: 2000 Bernoulli draws, 5 sigma = 0.056.
    assert abs(float(np.mean(b["scatter"])) - 0.5) < 0.056


# ----------------------------------------------------------------------------------------------
# Generated data against independent references


def test_dataset_contents(small):
    spec, out, report = small
    assert report.complete and report.samples_written == 8 and report.shards_written == 2
    with D.open(out) as ds:
        assert len(ds) == 8
        assert ds.indices.tolist() == list(range(8))
        s = ds[3]
        assert s["index"] == 3 and s["ct"] == "analytic-0"
        assert s["image"].shape == (40, 48) and s["image"].dtype == np.float32
        assert np.all(np.isfinite(s["image"]))
        assert s["landmark_names"] == tuple(jaxdrr.phantoms.pelvis_landmarks())
        assert s["label_names"] == tuple(jaxdrr.phantoms.PELVIS_LABELS.values())
        assert s["masks"].shape == (7, 40, 48) and s["masks"].dtype == np.uint8
        assert s["heatmaps"].shape == (13, 40, 48) and s["heatmaps"].dtype == np.float16
        assert s["line_integrals"].shape == (40, 48, 3)
        ds.verify()
        assert ds[-1]["index"] == 7 and [x["index"] for x in ds[2:4]] == [2, 3]
        with pytest.raises(IndexError):
            ds[8]


def test_pose_is_the_carm_of_the_drawn_angles(small):
    """P equals jaxdrr.geometry.carm() of the stored C-arm draw, and P = K [R | t]."""
    for s in all_samples(small[1]):
        g = CArmGeometry(
            sdd_mm=float(s["sdd_mm"]),
            sid_mm=float(s["sid_mm"]),
            height=40,
            width=48,
            pixel_size_mm=float(s["pixel_mm"]),
        )
        P = np.asarray(
            carm(float(s["lao_deg"]), float(s["cran_deg"]), s["isocenter_mm"].astype(np.float64), g)
        )
        scale = np.abs(P).max()
        # float32 P built from the same float32 inputs by a different program: a few eps of |P|.
        np.testing.assert_allclose(s["P"], P, rtol=0, atol=16 * EPS32 * scale)
        KRt = s["K"].astype(np.float64) @ np.concatenate([s["R"], s["t"][:, None]], 1)
        np.testing.assert_allclose(s["P"], KRt, rtol=0, atol=16 * EPS32 * scale)
        src = -np.linalg.solve(s["P"][:, :3].astype(np.float64), s["P"][:, 3])
        np.testing.assert_allclose(s["source_mm"], src, rtol=0, atol=1e-4 * np.linalg.norm(src))


def test_landmarks_match_geometry_projection(small):
    """Stored 2D landmarks and flags vs a float64 projection of the 3D points with the stored P."""
    pts = np.stack(list(jaxdrr.phantoms.pelvis_landmarks().values()))
    n_visible = 0
    for s in all_samples(small[1]):
        P = s["P"].astype(np.float64)
        h = pts @ P[:, :3].T + P[:, 3]
        xy = h[:, :2] / h[:, 2:]
        # Error bound of the float32 projection: each homogeneous coordinate is a 4-term dot
        # product with relative error <= 5 eps32 of its absolute terms; propagate through the division.
        abs_terms = np.abs(pts) @ np.abs(P[:, :3]).T + np.abs(P[:, 3])
        tol = 5 * EPS32 * (abs_terms[:, :2] + np.abs(xy) * abs_terms[:, 2:]) / np.abs(h[:, 2:])
        assert np.all(np.abs(s["landmarks_2d"] - xy) <= tol + 1e-6)
        np.testing.assert_allclose(s["landmarks_depth_mm"], h[:, 2], rtol=8 * EPS32)
        inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= 47.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= 39.5)
        margin = np.minimum.reduce([xy[:, 0] + 0.5, 47.5 - xy[:, 0], xy[:, 1] + 0.5, 39.5 - xy[:, 1]])
        clear = np.abs(margin) > 1e-3  # flags of points on the border are float-rounding dependent
        assert np.array_equal(s["landmarks_in_image"][clear], inside[clear])
        assert np.array_equal(s["landmarks_in_front"], h[:, 2] > 0)
        assert np.array_equal(s["landmarks_visible"], s["landmarks_in_image"] & s["landmarks_in_front"])
        n_visible += int(s["landmarks_visible"].sum())
        # Heatmaps peak at the landmark (within half a pixel plus rounding) and are zero when invisible.
        for k in range(len(pts)):
            hm = s["heatmaps"][k].astype(np.float32)
            if not s["landmarks_visible"][k]:
                assert not hm.any()
                continue
            r, c = np.unravel_index(np.argmax(hm), hm.shape)
            assert (
                abs(c - s["landmarks_2d"][k, 0]) <= 0.5 + 1e-3
                and abs(r - s["landmarks_2d"][k, 1]) <= 0.5 + 1e-3
            )
    assert n_visible > 20  # the test saw landmarks


def test_masks_match_label_line_integrals(small):
    """Masks = label path length > threshold, with the path length from the label map projected
    separately here (the reference projector, one label channel at a time)."""
    from jaxdrr.datasets.sources import load_ct, one_hot

    spec, out, _ = small
    assets = load_ct(spec, spec.cts[0])
    indicators = one_hot(assets.labels, assets.label_ids)
    for s in all_samples(out)[:3]:
        for k in range(len(assets.label_ids)):
            path = np.asarray(
                jaxdrr.project(
                    indicators[k : k + 1],
                    assets.volume.affine,
                    s["P"],
                    40,
                    48,
                    step_mm="planes",
                    backend="xla",
                )
            )[..., 0]
            stored = s["path_lengths_mm"][k].astype(np.float32)
            # float16 storage: relative rounding 2^-11; float32 projector differences are far smaller.
            np.testing.assert_allclose(stored, path, rtol=2**-10, atol=1e-3)
            differ = s["masks"][k].astype(bool) != (path > 0)
            assert np.all(path[differ] < 1e-3)  # only rays grazing a label can disagree
    # Anatomy: a visible femoral head centre lies inside its femur's mask.
    names = list(jaxdrr.phantoms.pelvis_landmarks())
    labels = list(jaxdrr.phantoms.PELVIS_LABELS.values())
    checked = 0
    for s in all_samples(out):
        for lm, label in (("FH-l", "left femur"), ("FH-r", "right femur")):
            i = names.index(lm)
            if s["landmarks_visible"][i]:
                c, r = np.rint(s["landmarks_2d"][i]).astype(int)
                if 0 <= r < 40 and 0 <= c < 48:
                    assert s["masks"][labels.index(label)][r, c] == 1
                    checked += 1
    assert checked > 0


def test_coco_annotations(small):
    out = small[1]
    coco = json.loads((out / "coco.json").read_text())
    samples = all_samples(out)
    assert [im["id"] for im in coco["images"]] == list(range(8))
    cats = {c["id"]: c for c in coco["categories"]}
    kp = [a for a in coco["annotations"] if "keypoints" in a]
    assert len(kp) == 8
    for a in kp:
        s = samples[a["image_id"]]
        assert cats[a["category_id"]]["keypoints"] == list(s["landmark_names"])
        k = np.asarray(a["keypoints"]).reshape(-1, 3)
        assert np.array_equal(k[:, 2] == 2, s["landmarks_visible"])
        vis = s["landmarks_visible"]
        np.testing.assert_allclose(k[vis, :2], s["landmarks_2d"][vis] + 0.5, atol=1e-3)
        assert a["num_keypoints"] == int(vis.sum())
    masks = [a for a in coco["annotations"] if "segmentation" in a]
    assert masks
    for a in masks:
        s = samples[a["image_id"]]
        k = list(s["label_names"]).index(cats[a["category_id"]]["name"])
        m = D.rle_decode(a["segmentation"])
        assert np.array_equal(m, s["masks"][k].astype(bool)) and a["area"] == int(m.sum())


def test_rle_roundtrip():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (1, 1), (16, 3)]:
        for p in (0.0, 0.3, 1.0):
            m = rng.random(shape) < p
            rle = D.rle_encode(m)
            assert sum(rle["counts"]) == m.size and np.array_equal(D.rle_decode(rle), m)


def test_reader_batches_and_pickle(small):
    out = small[1]
    ds = D.open(out)
    batches = list(ds.batches(3, fields=["image", "index"]))
    assert [b["image"].shape[0] for b in batches] == [3, 3, 2]
    assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(8))
    shuffled = np.concatenate([b["index"] for b in ds.batches(4, shuffle=True, seed=1)])
    assert sorted(shuffled.tolist()) == list(range(8)) and shuffled.tolist() != list(range(8))
    _ = ds[0]  # opens a file handle
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[5]["image"], ds[5]["image"])
    ds.close()
    clone.close()


def test_rerun_is_a_no_op_and_other_spec_is_refused(small, tmp_path):
    spec, out, _ = small
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    report = D.generate(spec, out, progress=False)
    assert report.shards_written == 0 and report.shards_already_done == 2 and report.complete
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    other = dataclasses.replace(spec, seed=spec.seed + 1)
    with pytest.raises(jaxdrr.JaxdrrError, match="different spec"):
        D.generate(other, out, progress=False)


def test_verify_detects_corruption(small, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small[1], copy)
    f = copy / "shards" / "shard-000001.h5"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(D.DatasetError, match="shard-000001.h5 does not match"):
        D.open(copy).verify()


# ----------------------------------------------------------------------------------------------
# Reliability


def test_unfinished_shards_are_redone(tmp_path):
    """A shard file without its manifest entry, and a stray temporary file, are not 'finished'."""
    spec = D.load_spec(
        write_spec(tmp_path / "s.toml", images=4, shard=2, batch=2, scatter=0.0, line_integrals="false")
    )
    out = tmp_path / "out"
    D.generate(spec, out, progress=False)
    reference = all_samples(out)
    (out / "shards" / "shard-000001.json").unlink()
    (out / "shards" / "shard-000001.h5").write_bytes(b"half-written")
    stray = out / "shards" / ".shard-000001.h5.host.123.abcd.tmp"
    stray.write_bytes(b"partial")
    with pytest.raises(D.DatasetError, match="1 of 2 shards"):
        D.open(out)
    report = D.generate(spec, out, progress=False)
    assert report.shards_written == 1 and report.shards_already_done == 1 and not stray.exists()
    assert_identical(all_samples(out), reference)


def test_disk_full_stops_cleanly_and_resumes(tmp_path, monkeypatch):
    spec = D.load_spec(
        write_spec(tmp_path / "s.toml", images=6, shard=2, batch=2, scatter=0.0, line_integrals="false")
    )
    out = tmp_path / "out"
    real = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        if str(dst).endswith(".h5"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", flaky_replace)
    with pytest.raises(D.DatasetWriteError, match="No space left on device.*rerun the same command"):
        D.generate(spec, out, progress=False)
    monkeypatch.setattr(store.os, "replace", real)
    assert sorted(p.name for p in (out / "shards").glob("*.json")) == ["shard-000000.json"]
    assert not list((out / "shards").glob(".*.tmp*"))  # the temporary file was removed
    report = D.generate(spec, out, progress=False)
    assert report.complete and report.shards_written == 2
    assert len(D.open(out)) == 6


def test_failed_ct_is_reported_and_the_rest_proceeds(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    data = {
        "images_per_ct": 2,
        "ct": [
            {"path": "missing.nii.gz"},
            {"path": "broken.nii.gz"},
            {"phantom": "analytic", "shape": [24, 20, 16]},
        ],
        "detector": {"height": 16, "width": 16, "pixel_mm": 24.0},
        "physics": {"noise": False},
        "output": {"shard_size": 2, "batch_size": 2, "coco": False},
    }
    spec = D.spec_from_dict(data, base_dir=tmp_path)
    out = tmp_path / "out"
    report = D.generate(spec, out, progress=False)
    assert set(report.failed_cts) == {"missing", "broken"} and not report.complete
    assert (
        "does not exist" in report.failed_cts["missing"]
        and "cannot read NIfTI" in report.failed_cts["broken"]
    )
    failures = sorted(p.name for p in (out / "failures").glob("*.json"))
    assert failures == ["ct-0000.json", "ct-0001.json"]
    log = (out / "logs" / "process-000.log").read_text()
    assert "CT 1 (broken) failed" in log
    with pytest.raises(D.DatasetError, match="1 of 3 shards.*ct-0000.json"):
        D.open(out)
    ds = D.open(out, allow_incomplete=True)
    assert ds.indices.tolist() == [4, 5]
    assert not json.loads((out / "manifest.json").read_text())["complete"]


def test_landmark_file_and_label_map_inputs(tmp_path):
    import nibabel as nib

    from jaxdrr.datasets.sources import load_ct, read_landmarks

    vol = jaxdrr.phantom(shape=(24, 20, 16))
    nib.save(nib.Nifti1Image(np.asarray(vol.data), vol.affine), tmp_path / "ct.nii.gz")
    labels = jaxdrr.phantoms.pelvis_label_map((24, 20, 16), vol.spacing)
    nib.save(nib.Nifti1Image(labels.astype(np.int16), vol.affine), tmp_path / "seg.nii.gz")
    pts = jaxdrr.phantoms.pelvis_landmarks()
    (tmp_path / "lm.csv").write_text(
        "name,x,y,z\n" + "".join(f"{k},{v[0]},{v[1]},{v[2]}\n" for k, v in pts.items())
    )
    data = {
        "images_per_ct": 2,
        "ct": [
            {
                "path": "ct.nii.gz",
                "landmarks": "lm.csv",
                "labels": "seg.nii.gz",
                "label_names": {"5": "left femur", "6": "right femur"},
            }
        ],
        "detector": {"height": 16, "width": 16, "pixel_mm": 24.0},
        "physics": {"noise": False},
        "output": {"shard_size": 2, "batch_size": 2},
    }
    spec = D.spec_from_dict(data, base_dir=tmp_path)
    D.generate(spec, tmp_path / "out", progress=False)
    s = D.open(tmp_path / "out")[0]
    assert s["landmark_names"] == tuple(pts)
    assert s["label_names"] == ("left femur", "right femur")  # the named labels are selected
    assert s["masks"].shape == (2, 16, 16)
    femurs = (labels == 5).astype(np.float32)[None], (labels == 6).astype(np.float32)[None]
    for k, indicator in enumerate(femurs):
        path = np.asarray(
            jaxdrr.project(indicator, vol.affine, s["P"], 16, 16, step_mm="planes", backend="xla")
        )
        differ = s["masks"][k].astype(bool) != (path[..., 0] > 0)
        assert np.all(path[..., 0][differ] < 1e-3)
    data["ct"][0]["label_names"] = {"9": "nothing"}
    with pytest.raises(jaxdrr.LoadError, match=r"label id\(s\) \[9\] named in label_names do not occur"):
        bad = D.spec_from_dict(data, base_dir=tmp_path)
        load_ct(bad, bad.cts[0])
    (tmp_path / "bad.csv").write_text("a,1,2\n")
    with pytest.raises(jaxdrr.LoadError, match="expected name,x,y,z"):
        read_landmarks(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------------
# Separate processes: the CLI, SIGKILL + resume, and jax.distributed with 2 processes


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """One uninterrupted 1-process CLI run: 12 shards of 2 images."""
    root = tmp_path_factory.mktemp("cli")
    spec = write_spec(root / "spec.toml", images=24, shard=2, batch=2, scatter=0.5, line_integrals="false")
    proc = cli("dataset", "--config", spec, "--out", root / "ref", "--no-progress")
    assert "dataset" in proc.stdout_text and "complete" in proc.stdout_text
    return spec, root / "ref", all_samples(root / "ref")


def test_cli_init_and_errors(tmp_path):
    proc = cli("dataset", "init", tmp_path / "p.toml")
    assert (tmp_path / "p.toml").is_file() and "jaxdrr dataset --config" in proc.stdout_text
    proc = cli("dataset", "--config", tmp_path / "missing.toml", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr_text
    (tmp_path / "typo.toml").write_text('[[ct]]\nphantom = "analytic"\n[pose]\nlao = 5\n')
    proc = cli("dataset", "--config", tmp_path / "typo.toml", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "pose: unknown key(s) lao" in proc.stderr_text


def test_sigkill_then_resume_is_bit_identical(cli_reference, tmp_path):
    spec, _, reference = cli_reference
    out = tmp_path / "killed"
    args = ("dataset", "--config", spec, "--out", out, "--no-progress")
    proc = start_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shards" / "shard-000000.json"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((out / "shards").glob("shard-*.json")))
    assert 1 <= done_at_kill < 12, f"the kill did not land mid-run ({done_at_kill} shards done)"
    with pytest.raises(D.DatasetError, match="shards are finished"):
        D.open(out)
    assert len(D.open(out, allow_incomplete=True)) == 2 * done_at_kill
    cli(*args)
    resumed = all_samples(out)
    assert [s["index"] for s in resumed] == list(range(24))  # every sample exactly once
    assert_identical(resumed, reference)
    assert not list((out / "shards").glob(".*.tmp*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(cli_reference, tmp_path):
    spec, _, reference = cli_reference
    out = tmp_path / "two"
    port = _free_port()
    procs = [
        start_cli(
            *(
                "dataset",
                "--config",
                spec,
                "--out",
                out,
                "--no-progress",
                "--coordinator",
                f"127.0.0.1:{port}",
            ),
            *("--num-processes", 2, "--process-id", i),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    assert "process 0/2" in results[0][0] and "process 1/2" in results[1][0]
    entries = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("shard-*.json"))]
    assert sorted({e["process"] for e in entries}) == [0, 1]
    assert all(e["process"] == e["shard"] % 2 for e in entries)
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert_identical(all_samples(out), reference)


def test_local_workers_equal_one_process(cli_reference, tmp_path):
    """--workers 2: two pinned local processes without jax.distributed, same samples."""
    spec, _, reference = cli_reference
    out = tmp_path / "workers"
    proc = cli("dataset", "--config", spec, "--out", out, "--workers", 2, "--no-progress")
    assert f"dataset {out}: complete" in proc.stdout_text
    entries = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("shard-*.json"))]
    assert sorted({e["process"] for e in entries}) == [0, 1]
    assert sorted((out / "logs").glob("*.log")) == [
        out / "logs" / "process-000.log",
        out / "logs" / "process-001.log",
    ]
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert_identical(all_samples(out), reference)


def test_batch_sharded_over_two_local_devices(tmp_path):
    """With 2 local devices the batch axis is split between them: the same samples up to float
    rounding (noise off, so that the comparison is of continuous functions of the inputs)."""
    spec = write_spec(tmp_path / "s.toml", images=8, shard=4, batch=4, scatter=0.5, noise="false")
    cli("dataset", "--config", spec, "--out", tmp_path / "one", "--no-progress")
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cli("dataset", "--config", spec, "--out", tmp_path / "two", "--no-progress", env=flags)
    for a, b in zip(all_samples(tmp_path / "one"), all_samples(tmp_path / "two")):
        for k in ("index", "kvp", "photons_per_pixel", "scatter"):
            assert np.array_equal(a[k], b[k]), k  # random draws: exact
        # Small matrix products may be vectorised differently for another batch shape (jax 0.10).
        np.testing.assert_allclose(b["P"], a["P"], rtol=0, atol=16 * EPS32 * np.abs(a["P"]).max())
        np.testing.assert_allclose(b["landmarks_2d"], a["landmarks_2d"], rtol=0, atol=1e-3)
        # The image sums ~100 energy bins and a few hundred samples per ray: a different
        # vectorisation may round differently, by a few eps32 relative.
        np.testing.assert_allclose(b["image"], a["image"], rtol=64 * EPS32, atol=64 * EPS32)
        # float16 path lengths: at most one float16 rounding step apart.
        pa, pb = a["path_lengths_mm"].astype(np.float32), b["path_lengths_mm"].astype(np.float32)
        np.testing.assert_allclose(pb, pa, rtol=2**-10, atol=1e-3)
        differ = a["masks"] != b["masks"]
        assert np.all(pa[differ] < 1e-3)  # a mask can differ only where the path is ~0
