"""Writes notebooks/01_quickstart.ipynb, executed (outputs and figures stored; the test suite runs it again).

Run: python tools/make_quickstart_notebook.py
"""

from notebook_util import write_notebook

CELLS = [
    (
        "md",
        """# jaxdrr quick start

Render a realistic X-ray from the built-in phantom, render many poses at once with `vmap`, and take the
gradient of an image loss with respect to the pose. Sizes are small so this runs in about a minute on a laptop CPU;
raise `SIZE` and `DETECTOR` for real work.""",
    ),
    (
        "code",
        """import time
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import jaxdrr
from jaxdrr import geometry as G

SIZE = (96, 80, 64)      # phantom voxels
DETECTOR = 128           # detector pixels per side
volume = jaxdrr.phantom(shape=SIZE)
print(volume)""",
    ),
    (
        "md",
        """## One image
A renderer is a pure function `render(params, volume, P, key)` built from a static configuration.
`params` holds the physics tables (1 keV tungsten spectrum, mass attenuation of air, soft tissue and bone).""",
    ),
    (
        "code",
        """carm = G.CArmGeometry().scaled(512 / DETECTOR)   # default C-arm, coarser detector
config = jaxdrr.RenderConfig(height=carm.height, width=carm.width, noise=jaxdrr.NoiseConfig())
params = jaxdrr.default_params(config)
render = jax.jit(jaxdrr.make_renderer(config))
P = G.carm(lao=30, cran=10, isocenter=volume.center, geometry=carm)
image = render(params, volume, P, jax.random.key(0))
plt.imshow(jaxdrr.display.window(image), cmap="gray"); plt.title("LAO 30, CRAN 10: -ln T"); plt.axis("off")
print("-ln T range:", float(image.min()), float(image.max()))""",
    ),
    (
        "md",
        """## Many poses at once
Arrays of angles give a batch of projection matrices; `vmap` over them and over keys: one compiled function
renders the whole batch.""",
    ),
    (
        "code",
        """angles = [(-40, 0), (0, 0), (40, 0), (0, 25)]   # (LAO, CRAN) per view
lao, cran = jnp.array(angles, dtype=jnp.float32).T
Ps = G.carm(lao, cran, isocenter=volume.center, geometry=carm)   # [4, 3, 4]
keys = jax.random.split(jax.random.key(1), len(angles))
render_many = jax.jit(jax.vmap(jaxdrr.make_renderer(config), in_axes=(None, None, 0, 0)))
images = render_many(params, volume, Ps, keys)
fig, axes = plt.subplots(1, len(angles), figsize=(12, 3))
for ax, img, (a, c) in zip(axes, images, angles):
    ax.imshow(jaxdrr.display.window(img), cmap="gray"); ax.set_title(f"LAO {a} CRAN {c}"); ax.axis("off")
assert images.shape == (len(angles), carm.height, carm.width)""",
    ),
    (
        "md",
        """## A pose gradient
The loss between a noise-free render at a guessed pose and a target image is differentiable with respect to
the C-arm angles (through `P`); the projector's custom VJP re-marches rays instead of storing samples.""",
    ),
    (
        "code",
        """clean = jaxdrr.make_renderer(config.replace(noise=None))
target = render(params, volume, G.carm(32.0, 8.0, isocenter=volume.center, geometry=carm), jax.random.key(2))

# Pass the volume as an argument: a CT closed over inside jit becomes a compile-time constant.
def loss(angles, volume):
    P = G.carm(angles[0], angles[1], isocenter=volume.center, geometry=carm)
    return jnp.mean((clean(params, volume, P, None) - target) ** 2)

value_and_grad = jax.jit(jax.value_and_grad(loss))
angles = jnp.array([26.0, 14.0])
history = []
for step in range(25):
    value, grad = value_and_grad(angles, volume)
    history.append(float(value))
    angles = angles - 3.0 * 0.87**step * grad / (jnp.linalg.norm(grad) + 1e-12)   # decaying step, degrees
print("recovered (LAO, CRAN):", np.round(np.asarray(angles), 2), " target: (32, 8)")
plt.plot(history); plt.xlabel("step"); plt.ylabel("MSE"); plt.yscale("log")
assert history[-1] < history[0]""",
    ),
]


def main():
    write_notebook(CELLS, "01_quickstart.ipynb")


if __name__ == "__main__":
    main()
