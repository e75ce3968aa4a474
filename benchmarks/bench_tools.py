"""Time of exact tool path lengths (jaxdrr.ops.mesh_path_lengths), alone and added to a pelvis render.

python benchmarks/bench_tools.py --size 512 --repeats 5            # ~2,000 and ~100,000 triangles
python benchmarks/bench_tools.py --size 512 --repeats 5 --pelvis   # + pelvis render with / without tools

Timing: jax.jit, one warm-up call (compile) excluded, median of --repeats, block_until_ready. The
meshes are a screw-like subdivided cylinder (~2,000 triangles, 6 mm x 60 mm) and a K-wire-like
cylinder (~100 triangles, 2 mm x 150 mm), plus a torus of 100,000 triangles (25 mm / 8 mm radii), posed
obliquely near the isocentre of an AP C-arm view. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
import trimesh

import jaxdrr
from jaxdrr import geometry as G
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.mesh import TriangleMesh
from jaxdrr.ops import mesh_path_lengths


def median_time(f, *args, repeats):
    jax.block_until_ready(f(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tools(centre):
    screw = trimesh.creation.cylinder(radius=3.0, height=60.0, sections=32).subdivide().subdivide()
    kwire = trimesh.creation.cylinder(radius=1.0, height=150.0, sections=24)
    ring = trimesh.creation.torus(major_radius=25.0, minor_radius=8.0, major_sections=250, minor_sections=200)
    place = lambda rot, shift: RigidTransform.create(rotation=rot, translation=np.asarray(centre) + shift)  # noqa: E731
    return {
        "screw": (
            TriangleMesh.create(screw.vertices, screw.faces),
            place((0.4, 1.1, 0.2), (20.0, 10.0, 0.0)),
        ),
        "kwire": (
            TriangleMesh.create(kwire.vertices, kwire.faces),
            place((1.2, 0.3, 0.5), (-30.0, 0.0, 10.0)),
        ),
        "ring": (TriangleMesh.create(ring.vertices, ring.faces), place((0.5, 0.3, 0.0), (0.0, 0.0, 0.0))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument(
        "--pelvis", action="store_true", help="also time a pelvis render with and without tools"
    )
    args = parser.parse_args(argv)
    size = args.size
    pixel = 0.4 * 512 / size
    volume = jaxdrr.phantom(kind="pelvis") if args.pelvis else None
    centre = np.asarray(volume.center) if volume is not None else np.zeros(3)
    carm = G.CArmGeometry(height=size, width=size, pixel_size_mm=pixel)
    P = G.carm(lao=0.0, cran=0.0, isocenter=centre, geometry=carm)
    meshes = tools(centre)
    result = {"size": size, "tile": args.tile, "load_avg": os.getloadavg()[0], "faces": {}}

    def paths(names):
        tris = [meshes[n][0].triangles(meshes[n][1]) for n in names]
        return jax.jit(lambda P: sum(mesh_path_lengths(t, P, size, size, tile=args.tile) for t in tris))

    for label, names in (("screw+kwire", ("screw", "kwire")), ("ring_100k", ("ring",))):
        result["faces"][label] = sum(meshes[n][0].num_faces for n in names)
        result[f"{label}_s"] = median_time(paths(names), P, repeats=args.repeats)
    if args.pelvis:
        config = jaxdrr.RenderConfig(height=size, width=size)
        params = jaxdrr.default_params(config)
        render = jax.jit(jaxdrr.make_renderer(config))
        tool_paths = paths(("screw", "kwire"))
        both = jax.jit(lambda params, volume, P: (render(params, volume, P, None), tool_paths(P)))
        # The whole scene: a parametric screw (~1,800 triangles) and K-wire placed in the pelvis,
        # displacing the tissue they occupy, each in its own spectral channel; and the same tools
        # laid on top of the tissue (displaces=False): the difference is the displacement's cost.
        from jaxdrr.instruments import kwire, screw
        from jaxdrr.scene import MeshObject, Scene, make_scene_renderer, scene_params

        objects = (
            MeshObject.from_instrument(screw(), pose=meshes["screw"][1], name="screw"),
            MeshObject.from_instrument(kwire(), pose=meshes["kwire"][1], name="kwire"),
        )
        scene = Scene.create(ct=volume, objects=objects)
        on_top = scene.replace(objects=tuple(o.replace(displaces=False) for o in objects))
        result["scene_faces"] = sum(int(o.mesh.num_faces) for o in objects)
        scene_render = jax.jit(make_scene_renderer(config))
        sparams = scene_params(config, scene)
        cases = {
            "pelvis_render_s": (render, (params, volume, P, None)),
            "pelvis_render_plus_paths_s": (both, (params, volume, P)),
            "pelvis_scene_render_s": (scene_render, (sparams, scene, P, None)),
            "pelvis_scene_on_top_render_s": (scene_render, (sparams, on_top, P, None)),
        }
        # Interleaved rounds (each case once per round) and the median of per-round ratios: this
        # shared 2-core machine drifts by +-20 % over a minute, which separate medians would confuse
        # with the overheads being measured.
        for f, a in cases.values():
            jax.block_until_ready(f(*a))  # compile + warm-up
        rounds = {k: [] for k in cases}
        for _ in range(args.repeats):
            for k, (f, a) in cases.items():
                start = time.perf_counter()
                jax.block_until_ready(f(*a))
                rounds[k].append(time.perf_counter() - start)
        base = np.asarray(rounds["pelvis_render_s"])
        for k, times in rounds.items():
            result[k] = statistics.median(times)
        for key, label in (
            ("pelvis_render_plus_paths_s", "paths_overhead"),
            ("pelvis_scene_render_s", "scene_overhead"),
            ("pelvis_scene_on_top_render_s", "scene_on_top_overhead"),
        ):
            result[label] = float(np.median(np.asarray(rounds[key]) / base) - 1.0)
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
