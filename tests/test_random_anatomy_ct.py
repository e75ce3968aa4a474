"""Random labelled anatomical CTs (jaxdrr.phantoms.anatomy.random_ct): determinism and exact labels.

Small grids (32^3 at 2 mm, painted at 1 mm) keep each case at about a second. The label properties
are checked on the truth image (``RandomScan(enabled=False)``: the painted HU, clipped to 12 bits),
where a voxel's value and its fractions come from the same painting, so they hold exactly; the
tolerances below are float32 rounding of the compositing (a few hundred painted layers at ~6e-8 each).
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxdrr.errors import JaxdrrError
from jaxdrr.phantoms.anatomy.ct import region_center
from jaxdrr.phantoms.anatomy.random_ct import (
    PADDING_HU,
    AnatomyVariation,
    LabelledScene,
    Pose,
    RandomScan,
    random_anatomical_ct,
)
from jaxdrr.phantoms.anatomy.shapes import ellipsoid

SMALL = {"shape": (32, 32, 32), "spacing_mm": (2.0, 2.0, 2.0)}
TRUTH = RandomScan(enabled=False)
PURE = 1.0 - 1e-4  # a voxel "entirely" of one class, up to float32 compositing error


def _identity_pose(region):
    return Pose(center=region_center(region))


def test_same_seed_same_ct_and_index_changes_it():
    a = random_anatomical_ct((3, 0), **SMALL)
    b = random_anatomical_ct((3, 0), **SMALL)
    c = random_anatomical_ct((3, 1), **SMALL)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.fractions, b.fractions)
    assert a.info == b.info
    assert not np.array_equal(a.hu, c.hu)


def test_fractions_are_a_partition_and_hu_in_range():
    for index in range(2):
        ct = random_anatomical_ct((4, index), **SMALL)
        f = ct.fractions
        assert f.shape == (4, *SMALL["shape"]) and f.dtype == np.float32
        assert f.min() >= 0.0 and f.max() <= 1.0 + 1e-6
        np.testing.assert_allclose(f.sum(0), 1.0, atol=1e-5)
        pad = ct.info["scan"]["padding_hu"]
        assert pad in PADDING_HU
        inside = (ct.hu >= -1024.0) & (ct.hu <= 3071.0)
        assert np.all(inside | (ct.hu == pad))
        # Outside the reconstruction circle: padding and air.
        assert np.all(f[0][ct.hu == pad] == 1.0) or pad == -1024.0


def test_scene_labels_whole_bone_with_the_painted_coverage():
    # Marrow at -80 HU (fatty) and sparse struts: most of the core is far below 350 HU, all of it bone.
    sc = LabelledScene((40, 40, 40), (1.0, 1.0, 1.0), (-19.5, -19.5, -19.5), np.random.default_rng(0))
    f = sc.field(ellipsoid((0, 0, 0), (15, 12, 14)))
    cover = sc.cover(f.sd.copy())
    sc.bone(f, 1.5, 1200.0, (-80.0, 300.0))
    bone = sc.fractions[2][f.slices]
    np.testing.assert_allclose(bone, cover, atol=1e-6)
    core = (bone >= PURE) & (sc.hu[f.slices] < 350.0)
    assert core.sum() > 0.5 * (bone >= PURE).sum()
    np.testing.assert_allclose(sc.fractions.sum(0), 1.0, atol=1e-6)


def test_bone_label_covers_low_density_marrow():
    variation = AnatomyVariation(trabecular_hu=(40.0, 60.0), marrow_hu=(-110.0, -90.0), p_metal=0.0)
    ct = random_anatomical_ct(
        7,
        region="pelvis",
        center_mm=(88.0, 5.0, -25.0),  # the right femoral head of a subject in the identity pose
        pose=_identity_pose("pelvis"),
        variation=variation,
        scan=TRUTH,
        **SMALL,
    )
    whole_bone = ct.fractions[2] >= PURE
    assert whole_bone.sum() > 500
    # Most of a whole osteoporotic bone with fatty marrow is below DeepDRR's 350 HU bone threshold.
    assert np.mean(ct.hu[whole_bone] < 350.0) > 0.5


def test_contrast_bolus_is_soft_tissue():
    variation = AnatomyVariation(p_bolus=1.0, p_contrast=1.0, p_metal=0.0)
    ct = random_anatomical_ct(
        2,
        region="chest",
        center_mm=(28.0, 22.0, 100.0),  # superior vena cava (subject (28, 12, 590))
        pose=_identity_pose("chest"),
        variation=variation,
        scan=TRUTH,
        **SMALL,
    )
    soft = ct.fractions[1] >= PURE
    assert ct.hu[soft].max() >= 3071.0  # the saturated bolus, labelled soft tissue
    assert ct.info["tissues"]["blood"] >= 150.0


def test_metal_is_metal():
    variation = AnatomyVariation(p_metal=1.0, implants=("hip_stem",))
    ct = random_anatomical_ct(
        1,
        region="pelvis",
        center_mm=(0.0, 5.0, -25.0),  # a band through both femoral heads: the stem is on either side
        pose=_identity_pose("pelvis"),
        variation=variation,
        scan=TRUTH,
        shape=(100, 16, 16),
        spacing_mm=(2.0, 2.0, 2.0),
    )
    assert ct.info["metal"] == "hip_stem"
    metal = ct.fractions[3] >= PURE
    assert metal.sum() > 100
    assert np.all(ct.hu[metal] == 3071.0)
    # Nothing but implants is metal: a voxel with metal fraction f holds f of 3071-HU fine voxels and
    # the rest at >= -1024 HU, so its (averaged) HU is at least f * 3071 + (1 - f) * -1024.
    f = ct.fractions[3]
    assert np.all(ct.hu >= f * 3071.0 + (1.0 - f) * -1024.0 - 0.05)


def test_bad_arguments_raise():
    with pytest.raises(JaxdrrError, match="region"):
        random_anatomical_ct(0, region="head", **SMALL)
    with pytest.raises(JaxdrrError, match="shape"):
        random_anatomical_ct(0, shape=(0, 4, 4))
