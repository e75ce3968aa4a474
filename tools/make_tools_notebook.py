"""Writes notebooks/04_tools.ipynb, executed (outputs and figures stored; the test suite runs it again).

A K-wire advanced through the built-in pelvis over a fluoroscopy sequence, and its 6-DoF pose
recovered from noisy images by gradient descent (:func:`jaxdrr.registration.register_tool`).

Run: python tools/make_tools_notebook.py
"""

from notebook_util import write_notebook

CELLS = [
    (
        "md",
        """# Surgical tools in the image: a K-wire in the pelvis

A scene is a CT plus posed objects (`jaxdrr.scene`). Here the object is a Kirschner wire: a 2.5 mm
stainless-steel (316L, 8.0 g/cm³) pin with a three-facet trocar tip, built as a closed triangle mesh
(`jaxdrr.instruments.kwire`). What the render models:

* **Spectral attenuation**: every pixel integrates the tube spectrum (tungsten anode, 1 keV bins)
  attenuated by the CT's materials (air, soft tissue, bone from HU) *and* the wire's steel: the steel's
  mass attenuation comes from the same tables (its composition), the wire's contribution is its exact
  ray/mesh chord length times its density. Beam hardening through steel and bone follows.
* **Displacement**: the wire *replaces* the tissue it occupies (the CT's integral over the wire's inside
  is subtracted), as a drilled wire does.
* **Noise**: quantum (Poisson-like, with the detector's crosstalk) and electronic readout noise
  (`jaxdrr.NoiseConfig`).

Everything is differentiable with respect to the wire's pose (a `RigidTransform`: rotation vector and
translation), which is what the second half uses: recover the wire's 6-DoF pose from the images.
Sizes are small (a 3.2 mm CT, 128 px detector) so this runs in a minute or two on a CPU.""",
    ),
    (
        "code",
        """import time
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import jaxdrr
from jaxdrr.geometry import carm
from jaxdrr.geometry.carm import CArmGeometry
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.instruments import kwire
from jaxdrr.registration import register_tool, tool_pose_errors
from jaxdrr.registration.tool_pose import perturb_tool_pose, tool_pose_along
from jaxdrr.scene import MeshObject, Scene, make_scene_renderer, project_landmarks, scene_params

plt.rcParams["figure.dpi"] = 65
ct = jaxdrr.phantom(kind="pelvis", shape=(122, 88, 119))        # the built-in pelvis CT at ~3.2 mm
wire = kwire(diameter_mm=2.5, length_mm=250.0, tip="trocar")    # 316L stainless steel
TIP, BASE = wire.landmarks["tip"], wire.landmarks["base"]       # (0, 0, 250) and the origin
wire_mesh = wire.mesh
print(ct)
print(f"K-wire: {wire.material}, {wire.density} g/cm^3, {wire.mesh.num_faces} triangles")""",
    ),
    (
        "md",
        """## The trajectory
A retrograde superior-pubic-ramus path: from the pubic tubercle along the ramus towards the
supra-acetabular bone. The skin entry is where the line, followed backwards, leaves the body (the CT
reads air). The C-arm is centred on the ramus: an AP view and a lateral one.""",
    ),
    (
        "code",
        """goal = np.array([-78.0, 18.0, -18.0])       # supra-acetabular bone: where the tip ends (mm, world)
tubercle = np.array([-20.0, 58.0, -58.0])   # near the pubic tubercle
direction = (goal - tubercle) / np.linalg.norm(goal - tubercle)

hu, to_voxel = np.asarray(ct.data), np.linalg.inv(np.asarray(ct.affine))
def hu_at(point):
    ijk = np.round(to_voxel[:3, :3] @ point + to_voxel[:3, 3]).astype(int)
    return hu[tuple(ijk)] if np.all((ijk >= 0) & (ijk < hu.shape)) else -1000.0

back = 0.0
while hu_at(tubercle - back * direction) > -500.0:
    back += 1.0
entry = tubercle - back * direction
path_mm = np.linalg.norm(goal - entry)
print("skin entry", entry.round(1), f"-> goal: {path_mm:.0f} mm of tissue")

# Seven frames: the tip advances over the last 100 mm of the path.
depths = np.linspace(path_mm - 100.0, path_mm, 7)
poses = [tool_pose_along(entry + d * direction, direction, TIP, BASE) for d in depths]
sequence = RigidTransform(jnp.stack([p.rotation for p in poses]), jnp.stack([p.translation for p in poses]),
                          poses[0].pivot)

geometry = CArmGeometry(height=128, width=128, pixel_size_mm=1.6)   # 128 px, ~140 mm field at the isocentre
isocenter = (tubercle + goal) / 2
AP = carm(0.0, 0.0, isocenter=isocenter, geometry=geometry)
LATERAL = carm(90.0, 0.0, isocenter=isocenter, geometry=geometry)
scene = Scene.create(ct, [MeshObject.create(wire_mesh, wire.material, wire.density, pose=poses[-1],
                                            name="kwire", landmarks=wire.landmarks)])
config = jaxdrr.RenderConfig(height=128, width=128, noise=jaxdrr.NoiseConfig())
params = scene_params(config, scene)""",
    ),
    (
        "md",
        """## The fluoroscopy sequence
One compiled function renders every frame: `vmap` over the wire's stacked poses, the views and the
noise keys (the seven AP frames, then a lateral view of the last pose). The red cross is the tip landmark
projected with the same camera (`project_landmarks`).""",
    ),
    (
        "code",
        """render = make_scene_renderer(config)
render_many = jax.jit(jax.vmap(render, in_axes=(None, scene.pose_in_axes("kwire"), 0, 0)))
all_poses = RigidTransform(jnp.concatenate([sequence.rotation, sequence.rotation[-1:]]),
                           jnp.concatenate([sequence.translation, sequence.translation[-1:]]), sequence.pivot)
cameras = jnp.stack([AP] * len(depths) + [LATERAL])
t0 = time.perf_counter()
images = render_many(params, scene.with_pose("kwire", all_poses), cameras, jax.random.split(jax.random.key(0), 8))
images.block_until_ready()
print(f"8 noisy frames in {time.perf_counter() - t0:.1f} s (compilation included)")

fig, axes = plt.subplots(2, 4, figsize=(11, 6))
for i, ax in enumerate(axes.flat):
    ax.imshow(images[i], cmap="gray")
    pose = RigidTransform(all_poses.rotation[i], all_poses.translation[i], all_poses.pivot)
    (u, v), _ = project_landmarks(cameras[i], pose, {"tip": TIP})["tip"]
    ax.plot(float(u), float(v), "r+", ms=10, mew=2)
    ax.set_title(f"AP, tip at {depths[i]:.0f} mm" if i < len(depths) else "lateral, last frame", fontsize=9)
    ax.axis("off")
plt.tight_layout()
assert bool(jnp.all(jnp.isfinite(images)))""",
    ),
    (
        "md",
        """## Recovering the wire's pose
The CT and the C-arm are known (after the patient's registration); the wire's 6-DoF pose is not. The last
frame's noisy AP and lateral images are the target. Starting 5 mm and 5° away (random directions), Adam
minimises the mean squared difference between noise-free renders and the target, coarse to fine (both
images blurred by 3, then 1.5 px, then not at all). The pose turns about the wire's tip, so the translation is
the tip's displacement. Only the tip shows where the wire is along its own axis, so the gradient there is weak
and Adam drifts; a last step scans the wire along its axis (+-10 mm, 0.5 mm steps) and keeps the best fit
(`axial_search_mm`).

**Why two views:** one view fixes the wire well across the image but only weakly along the viewing
direction (a shift towards the source changes the image only through magnification and perspective); the
errors below are split into the part along the AP viewing ray through the tip (*depth*) and across it
(*in-plane*). A single-view fit typically keeps the in-plane error small while the depth error stays at
several mm; the lateral view constrains the AP depth.""",
    ),
    (
        "code",
        """truth = poses[-1]
target = jnp.stack([images[len(depths) - 1], images[-1]])       # noisy AP and lateral of the last frame
views = jnp.stack([AP, LATERAL])
start = perturb_tool_pose(truth, 5.0, 5.0, np.random.default_rng(0))
clean = make_scene_renderer(config.replace(noise=None))       # the model: the same physics without noise
result = register_tool(clean, params, scene, "kwire", views, target, start, iterations=(30, 20, 20),
                       blur_sigmas_px=(3.0, 1.5, 0.0), axial_search_mm=10.0)
errors = [tool_pose_errors(result.pose_at(i), truth, TIP, BASE, AP) for i in range(len(result.losses) + 1)]
for label, e in (("start", errors[0]), ("final", errors[-1])):
    print(f"{label}: tip {e['tip_mm']:.2f} mm (AP in-plane {e['tip_in_plane_mm']:.2f}, depth {e['tip_depth_mm']:.2f}),"
          f" {e['tip_px']:.2f} px in AP; axis {e['axis_deg']:.2f} deg")
print(f"{len(result.losses)} iterations in {result.seconds:.0f} s (compilation included)")
assert errors[-1]["tip_mm"] < errors[0]["tip_mm"] and errors[-1]["axis_deg"] < errors[0]["axis_deg"]""",
    ),
    (
        "code",
        """fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].plot(result.losses); axes[0].set_yscale("log"); axes[0].set_xlabel("iteration")
axes[0].set_title("loss (MSE of blurred images; the blur changes per stage)", fontsize=9)
axes[1].plot([e["tip_mm"] for e in errors], label="3D tip error (mm)")
axes[1].plot([e["tip_in_plane_mm"] for e in errors], "--", label="AP in-plane (mm)")
axes[1].plot([e["tip_depth_mm"] for e in errors], ":", label="AP depth (mm)")
axes[1].plot([e["tip_px"] for e in errors], label="AP tip reprojection (px)")
axes[1].plot([e["axis_deg"] for e in errors], label="axis angle (deg)")
axes[1].set_xlabel("iteration"); axes[1].legend(fontsize=8); axes[1].set_ylim(bottom=0)
axes[2].imshow(target[0], cmap="gray")
for pose, style, label in ((truth, "g-", "truth"), (start, "y--", "start"), (result.pose, "r:", "estimate")):
    ends = pose.apply(jnp.stack([jnp.asarray(TIP), jnp.asarray(TIP) - jnp.asarray([0.0, 0.0, 120.0])]))
    (uv, _) = jaxdrr.geometry.project_points(AP, ends)
    axes[2].plot(uv[:, 0], uv[:, 1], style, lw=1.5, label=label)
axes[2].set_xlim(0, 127); axes[2].set_ylim(127, 0); axes[2].legend(fontsize=8); axes[2].axis("off")
axes[2].set_title("target (AP) with the wire's axis", fontsize=9)
plt.tight_layout()""",
    ),
    (
        "md",
        """`benchmarks/bench_tool_pose.py` repeats this over 20+ random starts within 10 mm / 10° (one or two
views) and reports the success rate, the median tip error and the time per registration.""",
    ),
]


def main():
    write_notebook(CELLS, "04_tools.ipynb")


if __name__ == "__main__":
    main()
