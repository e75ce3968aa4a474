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


def physics_tables(spec: DatasetSpec) -> dict:
    """The shared tables (see the module doc) as a pytree of device arrays.

    Energies at which every spectrum is zero are dropped, and each spectrum sums to 1.
    """
    config = render_config(spec)
    energies, spectra = spectra_table(spec)
    params = physics_params(config.materials.table_names, energies, spectra)
    tables = {"energies": params["energies"], "spectra": params["spectrum"], "mu_rho": params["mu_rho"]}
    if config.scatter is not None:
        from jaxdrr.models import scatter_net

        tables["scatter_net"] = scatter_net.load_pretrained()[1]
    return tables


def make_sample_fn(spec: DatasetSpec, landmark_count: int, label_count: int):
    """``sample(tables, ct, index) -> dict`` of one sample (see the module doc).

    ``ct`` is ``{"volume": Volume, "landmarks": [L, 3] | None, "isocenter": [3]}``: the volume's
    channels are the material densities (g/cm^3) followed by ``label_count`` label indicators (0/1),
    so one ray march gives both the line integrals and the label path lengths. The returned arrays are described in :mod:`jaxdrr.datasets.store`.
    """
    config = render_config(spec)
    ann = spec.annotations
    H, W = spec.detector.height, spec.detector.width
    channel_names = config.materials.names
    n_materials = len(channel_names)

    def sample(tables, ct, index):
        d = sampling.draw(spec, sampling.sample_key(spec.seed, index), ct["isocenter"], channel_names)
        cam = sampling.camera(spec, d)
        P = cam["P"]
        params = {
            "energies": tables["energies"],
            "spectrum": tables["spectra"][d["kvp_index"]],
            "mu_rho": tables["mu_rho"],
            "sdd_mm": d["sdd_mm"],
        }
        # One ray march for the material channels and the label indicators together.
        vol = ct["volume"]
        L_all = project(vol.data, vol.affine, P, H, W, step_mm=config.step_mm, backend=config.backend)
        L = L_all[..., :n_materials] / MM_PER_CM * d["density_scale"]  # g/cm^2
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
            path = jnp.moveaxis(L_all[..., n_materials:], -1, 0)
            if ann.masks:
                out["masks"] = path > ann.mask_threshold_mm
            if ann.path_lengths:
                out["path_lengths_mm"] = path
        return out

    return sample


def make_batch_fn(spec: DatasetSpec, landmark_count: int, label_count: int, devices=None):
    """``batch(tables, ct, indices [B]) -> dict of [B, ...]``: the vmapped, jitted sampler.

    With several ``devices`` (default: the local devices) the batch axis is sharded across them
    (``B`` must then be a multiple of their number; the generator pads batches).
    """
    fn = jax.vmap(make_sample_fn(spec, landmark_count, label_count), in_axes=(None, None, 0))
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) == 1:
        return jax.jit(fn)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("batch",))
    batch = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(replicated, replicated, batch), out_shardings=batch)
