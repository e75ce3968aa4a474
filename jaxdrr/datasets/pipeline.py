"""One vmapped, jitted call renders a batch of samples of one CT with all their annotations.

:func:`make_sample_fn` returns ``sample(tables, ct, index) -> dict`` for one sample index; it draws
the pose and physics (:mod:`jaxdrr.datasets.sampling`), projects the CT's material densities
(decomposed once per CT, outside), computes the primary's spectral moments once
(:func:`jaxdrr.render.primary_moments`, shared by the scatter ConvNet and the image), adds the
network's scatter when drawn, forms the image with noise (:func:`jaxdrr.render.image_from_moments`
with the drawn photons per pixel), and projects the landmarks and label map. :func:`make_batch_fn` vmaps and jits it over
indices (sharded over the local devices when there are several).

``tables`` holds the physics tables shared by all samples: the common energy grid, one emitted
spectrum per kVp of the spec ([S, E], under ``"spectra"``), the materials' mass attenuation (built by
:func:`jaxdrr.physics.params.physics_params`, as :func:`jaxdrr.default_params` builds a render's) and
the scatter network's weights. ``ct`` holds the per-CT arrays: the density volume, the label indicator volume and the
landmarks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.datasets import sampling
from jaxdrr.datasets.spec import DatasetSpec
from jaxdrr.geometry.projection import project_points, source_position
from jaxdrr.noise import NoiseConfig
from jaxdrr.ops.project import project
from jaxdrr.physics import spectra as spectra_lib
from jaxdrr.physics.params import physics_params
from jaxdrr.render import MM_PER_CM, RenderConfig, image_from_moments, primary_moments, scatter_images
from jaxdrr.scatter.estimate import ScatterConfig


def render_config(spec: DatasetSpec) -> RenderConfig:
    """The static renderer configuration of a spec (per-image values are passed at call time)."""
    phys = spec.physics
    scatter = None
    if phys.scatter_probability > 0:
        # The per-image SDD reaches the network through tables["sdd_mm"]; range warnings are
        # issued once per dataset by the generator, not per batch.
        scatter = ScatterConfig(method="net", warn_outside_range=False)
    return RenderConfig(
        height=spec.detector.height,
        width=spec.detector.width,
        materials=phys.materials,
        detector=phys.detector,
        output=phys.output,
        noise=NoiseConfig() if phys.noise else None,
        scatter=scatter,
    )


def spectra_table(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """(energies [E] keV, spectra [S, E] photon numbers) for the spec's kVp list, on one 1-keV grid.

    Each row is the rebinned spectrum as emitted; :func:`physics_tables` normalises the rows.
    """
    phys = spec.physics
    top = max(phys.kvp)
    energies = np.arange(1.0, top + 1.0)
    rows = []
    for kvp in phys.kvp:
        if phys.spectrum == "ipem78":
            s = spectra_lib.ipem78(kvp)
        else:
            s = spectra_lib.spekpy_spectrum(kvp, filtration_mm_al=phys.filtration_mm_al)
        s = spectra_lib.rebin(s, energies)
        rows.append(np.asarray(s.photon_fractions, np.float64))
    return energies, np.stack(rows)


def physics_tables(spec: DatasetSpec, tool_materials: tuple[str, ...] = ()) -> dict:
    """The shared tables (see the module doc) as a pytree of device arrays.

    Energies at which every spectrum is zero are dropped, and each spectrum sums to 1.
    ``tool_materials`` (:func:`jaxdrr.datasets.tools.tool_materials`) adds ``"object_mu_rho"``, the
    tools' mass attenuation on the same grid (:func:`jaxdrr.scene.with_object_materials`).
    """
    config = render_config(spec)
    energies, spectra = spectra_table(spec)
    params = physics_params(config.materials.table_names, energies, spectra)
    tables = {"energies": params["energies"], "spectra": params["spectrum"], "mu_rho": params["mu_rho"]}
    if tool_materials:
        from jaxdrr.scene import OBJECT_MU_RHO, with_object_materials

        tables[OBJECT_MU_RHO] = with_object_materials(tables, tool_materials)[OBJECT_MU_RHO]
    if config.scatter is not None:
        from jaxdrr.models import scatter_net

        tables["scatter_net"] = scatter_net.load_pretrained()[1]
    return tables


def make_sample_fn(spec: DatasetSpec, landmark_count: int, label_count: int, tools: tuple = ()):
    """``sample(tables, ct, index) -> dict`` of one sample (see the module doc).

    Without tools, ``ct`` is ``{"volume": Volume, "landmarks": [L, 3] | None, "isocenter": [3]}``:
    the volume's channels are the material densities (g/cm^3) followed by ``label_count`` label
    indicators (0/1), so one ray march gives both the line integrals and the label path lengths.

    With ``tools`` (:class:`jaxdrr.datasets.tools.ToolGeometry` per ``spec.tools``), ``ct`` holds
    instead ``"scene"`` (a :class:`jaxdrr.scene.Scene` of the density volume and the tools' mesh
    objects), ``"labels"`` (the label indicator Volume, or None) and ``"bounds"`` ([2, 3], the CT's
    world bounding box). The tools' poses are drawn (:func:`jaxdrr.datasets.sampling.draw_tools`),
    absent ones moved out of the field of view, and the scene's line integrals
    (:func:`jaxdrr.scene.scene_line_integrals`: tissue minus what the tools displace, plus one
    channel per tool material) go through the same spectral image formation. Label path lengths
    are the anatomy's (tools do not change them). The returned arrays are described in
    :mod:`jaxdrr.datasets.store`.
    """
    config = render_config(spec)
    ann = spec.annotations
    H, W = spec.detector.height, spec.detector.width
    channel_names = config.materials.names
    n_materials = len(channel_names)

    def sample(tables, ct, index):
        key = sampling.sample_key(spec.seed, index)
        d = sampling.draw(spec, key, ct["isocenter"], channel_names)
        cam = sampling.camera(spec, d)
        P = cam["P"]
        params = {
            "energies": tables["energies"],
            "spectrum": tables["spectra"][d["kvp_index"]],
            "mu_rho": tables["mu_rho"],
            "sdd_mm": d["sdd_mm"],
        }
        tool_out = {}
        if tools:
            vol = ct["scene"].ct
            L, params["mu_rho"], tool_out = _tool_line_integrals(config, spec, tools, tables, ct, key, d, cam)
            L = jnp.concatenate([L[..., :n_materials] * d["density_scale"], L[..., n_materials:]], -1)
            label_paths = None
            if label_count and (ann.masks or ann.path_lengths):
                labels = ct["labels"]
                label_paths = project(
                    labels.data, labels.affine, P, H, W, step_mm=config.step_mm, backend=config.backend
                )
        else:
            # One ray march for the material channels and the label indicators together.
            vol = ct["volume"]
            L_all = project(vol.data, vol.affine, P, H, W, step_mm=config.step_mm, backend=config.backend)
            L = L_all[..., :n_materials] / MM_PER_CM * d["density_scale"]  # g/cm^2
            label_paths = L_all[..., n_materials:]
        moments = primary_moments(params, L)  # once: for the image and the scatter network
        scatter = None
        if config.scatter is not None:
            params["scatter_net"] = tables["scatter_net"]
            s_ei, s_pc = scatter_images(config, params, L, P, vol, moments=moments)
            on = d["scatter"].astype(s_ei.dtype)
            scatter = (s_ei * on, s_pc * on)
        key = d["noise_key"] if config.noise is not None else None
        image = image_from_moments(
            config, params, moments, key, scatter, photons_per_pixel=d["photons_per_pixel"]
        )
        out = {
            "index": jnp.asarray(index, jnp.int64 if jax.config.jax_enable_x64 else jnp.int32),
            "image": image,
            **cam,
            "source_mm": source_position(P),
            **{k: d[k] for k in ("lao_deg", "cran_deg", "isocenter_mm", "sdd_mm", "sid_mm", "pixel_mm")},
            **{k: d[k] for k in ("kvp", "photons_per_pixel", "density_scale")},
            "scatter": d["scatter"] if config.scatter is not None else jnp.asarray(False),
            **tool_out,
        }
        if ann.line_integrals:
            out["line_integrals"] = L
        if landmark_count and ann.landmarks:
            xy, depth = project_points(P, ct["landmarks"])
            x, y = xy[:, 0], xy[:, 1]
            in_front = depth > 0
            in_image = (x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5) & jnp.isfinite(x + y)
            visible = in_front & in_image
            out.update(
                landmarks_2d=xy,
                landmarks_depth_mm=depth,
                landmarks_in_image=in_image,
                landmarks_in_front=in_front,
                landmarks_visible=visible,
            )
            if ann.heatmaps:
                rows = jnp.arange(H, dtype=xy.dtype)[None, :, None]
                cols = jnp.arange(W, dtype=xy.dtype)[None, None, :]
                r2 = (cols - x[:, None, None]) ** 2 + (rows - y[:, None, None]) ** 2
                heat = jnp.exp(-0.5 * r2 / ann.heatmap_sigma_px**2)
                out["heatmaps"] = jnp.where(visible[:, None, None], heat, 0.0)
        if label_count and (ann.masks or ann.path_lengths):
            # Path length (mm) through each label: the line integral of its indicator volume.
            path = jnp.moveaxis(label_paths, -1, 0)
            if ann.masks:
                out["masks"] = path > ann.mask_threshold_mm
            if ann.path_lengths:
                out["path_lengths_mm"] = path
        return out

    return sample


def _tool_line_integrals(config, spec, tools, tables, ct, key, d, cam):
    """Line integrals [H, W, M + K] (g/cm^2) of the CT and the posed tools, their mass attenuation
    [M + K, E], and the per-image tool annotations (see :mod:`jaxdrr.datasets.store`)."""
    from jaxdrr.geometry.rigid import RigidTransform
    from jaxdrr.scene import OBJECT_MU_RHO, object_path_lengths, project_landmarks, scene_line_integrals

    H, W = config.height, config.width
    P = cam["P"]
    draws = sampling.draw_tools(spec, tools, key, ct["bounds"])
    present = draws["present"]
    # An absent tool is moved sideways (along the camera's x axis, perpendicular to the principal
    # ray) far enough that no pixel ray reaches it: beyond the cone of rays through the detector's
    # diagonal at every depth the tool spans. The scene keeps the same objects in every image.
    source = source_position(P)
    distance = jnp.linalg.norm(d["isocenter_mm"] - source)
    tan_cone = jnp.hypot(H, W) * d["pixel_mm"] / d["sdd_mm"]
    poses, drawn, keypoints = {}, [], []
    for i, geo in enumerate(tools):
        pose = sampling.tool_pose(spec, tools, draws, i)
        drawn.append(pose)
        far = 4.0 * (distance + geo.radius) * (1.0 + tan_cone)
        centroid = pose.apply(jnp.asarray(geo.centroid, P.dtype))
        shift = d["isocenter_mm"] + far * cam["R"][0] - centroid
        translation = pose.translation + jnp.where(present[i], 0.0, 1.0) * shift
        poses[geo.name] = RigidTransform(pose.rotation, translation, pose.pivot)
        keypoints.append(
            project_landmarks(P, pose, dict(zip(geo.keypoint_names, geo.keypoint_array(), strict=True)))
        )
    scene = ct["scene"].with_poses(poses)
    scene_params = {
        "energies": tables["energies"],
        "mu_rho": tables["mu_rho"],
        OBJECT_MU_RHO: tables[OBJECT_MU_RHO],
    }
    L, mu_rho = scene_line_integrals(config, scene_params, scene, P)
    paths = object_path_lengths(config, scene, P)
    path = jnp.stack([paths[geo.name] for geo in tools])
    # Keypoints padded to the largest count; padding is never visible.
    K = max(len(geo.keypoint_names) for geo in tools)
    xy = jnp.zeros((len(tools), K, 2), P.dtype)
    depth = jnp.zeros((len(tools), K), P.dtype)
    valid = np.zeros((len(tools), K), bool)
    for i, geo in enumerate(tools):
        for k, name in enumerate(geo.keypoint_names):
            uv, z = keypoints[i][name]
            xy = xy.at[i, k].set(uv)
            depth = depth.at[i, k].set(z)
            valid[i, k] = True
    x, y = xy[..., 0], xy[..., 1]
    in_image = (x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5) & jnp.isfinite(x + y)
    visible = jnp.asarray(valid) & present[:, None] & (depth > 0) & in_image
    out = {
        "tool_present": present,
        "tool_pose": jnp.stack([pose.matrix() for pose in drawn]),
        "tool_entry_mm": draws["entry_mm"],
        "tool_direction": draws["direction"],
        "tool_depth_mm": draws["depth_mm"],
        "tool_spin_deg": draws["spin_deg"],
        "tool_keypoints_2d": xy,
        "tool_keypoints_depth_mm": depth,
        "tool_keypoints_visible": visible,
        "tool_masks": path > 0,
    }
    if spec.annotations.tool_path_length:
        out["tool_path_length_mm"] = path
    return L, mu_rho, out


def make_batch_fn(spec: DatasetSpec, landmark_count: int, label_count: int, devices=None, tools: tuple = ()):
    """``batch(tables, ct, indices [B]) -> dict of [B, ...]``: the vmapped, jitted sampler.

    With several ``devices`` (default: the local devices) the batch axis is sharded across them
    (``B`` must then be a multiple of their number; the generator pads batches). ``tools``: see
    :func:`make_sample_fn`.
    """
    fn = jax.vmap(make_sample_fn(spec, landmark_count, label_count, tools), in_axes=(None, None, 0))
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) == 1:
        return jax.jit(fn)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("batch",))
    batch = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(replicated, replicated, batch), out_shardings=batch)
