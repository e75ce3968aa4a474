"""The anatomical demo CT (jaxdrr.phantoms.anatomy) and the CLI's built-in phantom that uses it."""

import numpy as np
import pytest

import jaxdrr
from jaxdrr.cli import build_parser, main
from jaxdrr.errors import JaxdrrError
from jaxdrr.phantoms import DEMO_REGIONS, demo_hu, demo_volume

# Coarse grids keep these tests fast; the anatomy is the same at any resolution.
SMALL = {"pelvis": (78, 56, 76), "chest": (72, 54, 78), "abdomen": (64, 48, 64), "limb": (56, 50, 100)}


@pytest.fixture(scope="module")
def pelvis():
    return demo_hu("pelvis", shape=SMALL["pelvis"])


def test_deterministic(pelvis):
    hu, affine = pelvis
    hu2, affine2 = demo_hu("pelvis", shape=SMALL["pelvis"])
    assert hu.dtype == np.float32 and hu.shape == SMALL["pelvis"]
    assert hu.tobytes() == hu2.tobytes() and np.array_equal(affine, affine2)
    other, _ = demo_hu("pelvis", seed=1, shape=SMALL["pelvis"])
    assert not np.array_equal(hu, other)  # the seed changes the subject


def test_pelvis_has_air_soft_tissue_and_bone(pelvis):
    hu, affine = pelvis
    assert np.all(np.isfinite(hu)) and hu.min() >= -1024 and hu.max() <= 3071
    n = hu.size
    assert np.mean(hu < -900) > 0.05  # air around the body
    assert np.mean((hu > -150) & (hu < -50)) > 0.05  # fat
    assert np.mean((hu > 0) & (hu < 100)) > 0.2  # muscle, organs, bladder
    assert np.mean(hu > 300) > 0.005 and hu.max() > 900  # bone
    # Bowel gas: air inside the body, between its left and right skin, above the thighs (z > -100 mm
    # in the volume frame, whose centre is 25 mm above the femoral heads).
    z = np.diag(affine)[2] * np.arange(hu.shape[2]) + affine[2, 3]
    trunk = hu[:, :, z > -100.0]
    tissue = trunk > -500
    first = np.argmax(tissue, axis=0)
    last = trunk.shape[0] - 1 - np.argmax(tissue[::-1], axis=0)
    i = np.arange(trunk.shape[0])[:, None, None]
    gas = (i > first) & (i < last) & ~tissue & tissue.any(axis=0)
    assert gas.sum() > 0.001 * n
    # Centred at the world origin with a diagonal affine, like jaxdrr.phantom().
    assert np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))
    assert np.allclose(affine[:3, :3] @ (np.asarray(hu.shape) - 1) / 2 + affine[:3, 3], 0.0)


def test_cortex_is_brighter_than_the_interior():
    # Shafts of the knee's femur (z = +120 mm) and tibia (z = -110 mm): a ring of cortex around the
    # medullary canal, on a narrow 1 mm grid around the leg's axis.
    hu, affine = demo_hu("limb", shape=(60, 60, 300), spacing_mm=1.0, ct_noise_hu=0.0)
    x, y, z = (np.diag(affine)[d] * np.arange(hu.shape[d]) + affine[d, 3] for d in range(3))
    for z0, y0 in ((120.0, 3.0), (-110.0, 4.0)):
        row = hu[:, int(np.argmin(np.abs(y - y0))), int(np.argmin(np.abs(z - z0)))]
        bone = np.nonzero(row > 300)[0]
        assert 15 < np.ptp(x[bone]) < 40  # a shaft 2-3 cm across
        centre = row[int(np.argmin(np.abs(x)))]
        assert row.max() > 900 and centre < 300 and row.max() > centre + 700


def test_every_region(pelvis):
    for region in DEMO_REGIONS:
        shape = SMALL[region]
        hu = pelvis[0] if region == "pelvis" else demo_hu(region, shape=shape)[0]
        assert hu.shape == shape and np.all(np.isfinite(hu))
        assert hu.max() > 700 and hu.min() < -900, region
    chest = demo_hu("chest", shape=SMALL["chest"])[0]
    mid = chest[20:52, 10:44, 20:60]
    assert np.mean((mid > -950) & (mid < -600)) > 0.2  # aerated lung inside the chest


def test_volume_api_and_phantom_kinds():
    v = demo_volume("limb", shape=(20, 18, 30))
    assert isinstance(v, jaxdrr.Volume) and v.kind == "hu" and v.shape == (20, 18, 30)
    v2 = jaxdrr.phantom(kind="limb", shape=(20, 18, 30))
    assert np.array_equal(np.asarray(v.data), np.asarray(v2.data))
    np.testing.assert_allclose(np.diag(demo_volume("limb", spacing_mm=10.0).affine)[:3], 10.0)
    # The analytic phantom stays the default of jaxdrr.phantom().
    analytic = jaxdrr.phantom(shape=(24, 20, 16))
    explicit = jaxdrr.phantom(shape=(24, 20, 16), kind="analytic")
    assert np.array_equal(np.asarray(analytic.data), np.asarray(explicit.data))
    assert jaxdrr.phantom().shape == (128, 128, 96)
    with pytest.raises(JaxdrrError, match="unknown demo region"):
        demo_hu("head")
    with pytest.raises(ValueError, match="unknown phantom kind"):
        jaxdrr.phantom(kind="head")
    with pytest.raises(JaxdrrError, match="shape"):
        demo_hu("pelvis", shape=(10, 0, 10))


def test_cli_default_renders_the_anatomical_pelvis(tmp_path):
    args = build_parser().parse_args(["render"])
    assert args.ct == "phantom" and args.phantom == "pelvis" and args.phantom_size is None
    small = ["--phantom-size", "40", "32", "36", "--height", "24", "--width", "32", "--pixel-size", "14"]
    images = {}
    for kind in ("pelvis", "analytic"):
        npz = tmp_path / f"{kind}.npz"
        flag = [] if kind == "pelvis" else ["--phantom", kind]
        out = tmp_path / f"{kind}.png"
        assert main(["render", *small, *flag, "--no-noise", "--out", str(out), "--save-npz", str(npz)]) == 0
        assert out.exists()
        images[kind] = jaxdrr.load_npz(npz)["image"]
        assert images[kind].shape == (24, 32) and np.all(np.isfinite(images[kind]))
    assert images["pelvis"].max() > 2.0  # -ln T through the body
    assert not np.allclose(images["pelvis"], images["analytic"])


def test_cli_phantom_option_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = capsys.readouterr().out
    assert "--phantom " in text or "--phantom {" in text
    for kind in ("pelvis", "chest", "abdomen", "limb", "analytic"):
        assert kind in text
