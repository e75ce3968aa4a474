"""Trains the scatter ConvNet (:mod:`jaxdrr.models.scatter_net`) on Monte Carlo data.

Data: ``python -m jaxdrr.training.scatter_data`` (``runs/scatter_data/{train,test}``). Samples whose
index is a multiple of :data:`VAL_EVERY` are held out of training for model selection; the
``test`` split (many more photons per image, two independent halves) is only evaluated at export.

Loss: squared error relative to a smoothed Monte Carlo target, ``mean((s_net - s_mc)^2 /
(smooth(s_mc) + floor)^2)`` over both readouts. The targets are noisy (about 1e6 histories per
image); a squared error is unbiased for them, and the weight comes from a smoothed copy, so it
barely depends on a pixel's own noise. Random horizontal and vertical flips (the mirrored patient
gives the mirrored scatter; the grid's septa stay along image y).

Resumable: ``run_dir/checkpoint.msgpack`` (weights, optimiser state, step; atomic) every
``--every`` steps; ``log.jsonl`` per evaluation; ``best.msgpack`` at the best validation loss.

    python -m jaxdrr.training.train_scatter --data runs/scatter_data --run-dir runs/scatter --steps 4000
    python -m jaxdrr.training.train_scatter --data runs/scatter_data --run-dir runs/scatter \
        --export jaxdrr/models/weights/scatter_default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxdrr.atomic import write_bytes, write_json, write_npz, write_text
from jaxdrr.models import scatter_net
from jaxdrr.training import scatter_data

VAL_EVERY = 10
SHADOW_T = 0.8  # "inside the object shadow": primary transmission below this


def _smooth(s: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(s, sigma=(0, sigma, sigma, 0), mode="nearest")


def prepare(data: dict) -> dict:
    """Arrays for training: images, cond, targets and per-pixel weights.

    The weight is ``1 / (smooth(s) + mean smooth(s))^2`` per image: relative to the local scatter
    where it is high, softened where it is low (where a 1e6-history image has a handful of photons
    per pixel, whose noise would otherwise dominate), and every image counts about equally.
    """
    s = data["s"].astype(np.float32)
    ref = _smooth(s)
    floor = ref.mean(axis=(1, 2), keepdims=True) + 1e-9
    return {
        "images": data["low"].astype(np.float32),
        "cond": data["cond"].astype(np.float32),
        "s": s,
        "weight": (1.0 / (ref + floor) ** 2).astype(np.float32),
    }


def split_train_val(data: dict) -> tuple[dict, dict]:
    idx = np.array([m["index"] for m in data["meta"]])
    val = idx % VAL_EVERY == 0
    pick = lambda mask: {k: v[mask] for k, v in prepare(data).items()}  # noqa: E731
    return pick(~val), pick(val)


def loss_fn(weights, config, batch):
    pred = scatter_net.apply(weights, batch["images"], batch["cond"], config)
    return jnp.mean((pred - batch["s"]) ** 2 * batch["weight"])


def scatter_errors(pred, mc, transmission, mc_a=None, mc_b=None, block: int = 4) -> dict:
    """Errors of a scatter estimate against Monte Carlo, over a set of images.

    Args:
      pred, mc: [N, h, w] estimate and Monte Carlo scatter (one readout).
      transmission: [N, h, w] primary transmission (the object shadow is ``< SHADOW_T``).
      mc_a, mc_b: two independent Monte Carlo halves (``mc`` their mean) for the noise terms.
      block: MAPE is computed on ``block x block`` binned images (a per-pixel MAPE against a noisy
        Monte Carlo image with a few photons per pixel, some zero, is dominated by its noise).

    Returns:
      ``nmse`` = sum (p - m)^2 / sum m^2; with halves also ``nmse_noise_corrected`` (the Monte
      Carlo variance, estimated per pixel as (a - b)^2 / 4, removed from numerator and
      denominator: an unbiased estimate of the error against the noise-free scatter) and
      ``mc_noise_nmse``; ``mape_shadow_binned`` (mean |p - m| / m over binned pixels inside the
      shadow) and, with halves, ``mc_noise_mape_binned`` (the MAPE a perfect estimate would get
      from Monte Carlo noise alone, mean |a - b| / (a + b)); ``mape_total`` (of each image's mean
      scatter, the scatter level).
    """
    pred, mc, transmission = (np.asarray(a, np.float64) for a in (pred, mc, transmission))

    def binned(a):
        n, h, w = a.shape
        h2, w2 = h // block, w // block
        return a[:, : h2 * block, : w2 * block].reshape(n, h2, block, w2, block).mean(axis=(2, 4))

    pb, mb = binned(pred), binned(mc)
    shadow = (binned(transmission) < SHADOW_T) & (mb > 0)
    out = {
        "nmse": float(np.sum((pred - mc) ** 2) / np.sum(mc**2)),
        "mape_shadow_binned": float(np.mean(np.abs(pb - mb)[shadow] / mb[shadow])),
        "mape_total": float(np.mean(np.abs(pred.mean(axis=(1, 2)) / mc.mean(axis=(1, 2)) - 1))),
        "shadow_fraction": float(shadow.mean()),
    }
    if mc_a is not None and mc_b is not None:
        a, b = np.asarray(mc_a, np.float64), np.asarray(mc_b, np.float64)
        var = np.sum((a - b) ** 2) / 4.0
        out["nmse_noise_corrected"] = float((np.sum((pred - mc) ** 2) - var) / (np.sum(mc**2) - var))
        out["mc_noise_nmse"] = float(var / np.sum(mc**2))
        ab, bb = binned(a), binned(b)
        out["mc_noise_mape_binned"] = float(np.mean((np.abs(ab - bb) / (ab + bb))[shadow]))
    return out


def evaluate(weights, config, data: dict, halves: bool = False) -> dict:
    """Errors of the network on a loaded split (both readouts: ``ei`` and ``pc`` keys)."""
    pred = np.asarray(
        jax.jit(scatter_net.apply, static_argnums=3)(weights, data["low"], data["cond"], config)
    )
    result = {}
    for r, name in enumerate(("ei", "pc")):
        kw = {}
        if halves and "s_a" in data:
            kw = {"mc_a": data["s_a"][..., r], "mc_b": data["s_b"][..., r]}
        result[name] = scatter_errors(pred[..., r], data["s"][..., r], data["low"][..., r], **kw)
    return result


def _flip(batch, rng):
    fy, fx = rng.random() < 0.5, rng.random() < 0.5
    out = dict(batch)
    for k in ("images", "s", "weight"):
        a = batch[k]
        if fy:
            a = a[:, ::-1]
        if fx:
            a = a[:, :, ::-1]
        out[k] = np.ascontiguousarray(a)
    return out


def train(args) -> None:
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config = scatter_net.ScatterNetConfig(widths=tuple(args.widths))
    data = scatter_data.load(args.data, "train")
    train_set, val_set = split_train_val(data)
    n = len(train_set["s"])
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(100, args.steps // 10), args.steps, args.lr * 0.02
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
    weights = scatter_net.init_weights(config, seed=args.seed)
    state = {"weights": weights, "opt": opt.init(weights), "step": 0, "best": float("inf")}
    ckpt = run / "checkpoint.msgpack"
    if ckpt.exists():
        state = serialization.from_bytes(state, ckpt.read_bytes())
        print(f"resumed at step {int(state['step'])}")
    write_json(
        run / "config.json",
        {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "train": n},
        indent=2,
    )

    @jax.jit
    def step_fn(weights, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(weights, config, batch)
        updates, opt_state = opt.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state, loss

    val_loss_fn = jax.jit(lambda w, b: loss_fn(w, config, b))
    weights, opt_state = state["weights"], state["opt"]
    step, best = int(state["step"]), float(state["best"])
    t0, losses = time.time(), []
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])  # batches are a function of the step
        idx = rng.choice(n, size=min(args.batch, n), replace=False)
        batch = _flip({k: v[idx] for k, v in train_set.items()}, rng)
        weights, opt_state, loss = step_fn(weights, opt_state, batch)
        losses.append(float(loss))
        step += 1
        if step % args.every == 0 or step == args.steps:
            val = float(val_loss_fn(weights, val_set))
            rec = {
                "step": step,
                "train_loss": float(np.mean(losses)),
                "val_loss": val,
                "seconds": round(time.time() - t0, 1),
            }
            losses = []
            if val < best:
                best = val
                write_bytes(run / "best.msgpack", serialization.to_bytes(weights))
                rec["best"] = True
            state = {"weights": weights, "opt": opt_state, "step": step, "best": best}
            write_bytes(ckpt, serialization.to_bytes(state))
            with open(run / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)


def export(args) -> None:
    """Best weights -> the package, with the held-out errors and the data budget in the record."""
    run = Path(args.run_dir)
    run_config = json.loads((run / "config.json").read_text())
    config = scatter_net.ScatterNetConfig(widths=tuple(run_config["widths"]))
    template = scatter_net.init_weights(config)
    weights = serialization.from_bytes(template, (run / "best.msgpack").read_bytes())
    data = scatter_data.load(args.data, "train")
    _, val_set = split_train_val(data)
    val = {k: v for k, v in data.items() if k != "meta"}
    val_mask = np.array([m["index"] % VAL_EVERY == 0 for m in data["meta"]])
    val = {k: v[val_mask] for k, v in val.items()}
    test = scatter_data.load(args.data, "test")
    log = [
        json.loads(line) for line in (Path(args.data) / "log.jsonl").read_text().splitlines() if line.strip()
    ]
    done = [r for r in log if "error" not in r]
    budget = {
        split: {
            "samples": sum(1 for r in done if r["split"] == split),
            "photons": float(sum(r["photons"] for r in done if r["split"] == split)),
            "cpu_hours": round(sum(r["cpu_s"] for r in done if r["split"] == split) / 3600, 2),
        }
        for split in ("train", "test")
    }
    train_log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    best = min(train_log, key=lambda r: r["val_loss"])
    record = {
        "step": best["step"],
        "seed": run_config["seed"],
        "command": "python -m jaxdrr.training.train_scatter "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in run_config.items()
            if k in ("data", "run_dir", "steps", "batch", "lr", "seed", "widths")
        ),
        "data_command": "runs/scatter_data/run.sh (python -m jaxdrr.training.scatter_data ...)",
        "data_budget": budget,
        "validation": evaluate(weights, config, val),
        "heldout": evaluate(weights, config, test, halves=True),
        "heldout_indices": [m["index"] for m in test["meta"]],
    }
    out = scatter_net.save_weights(args.export, weights, config, record)
    heldout = {
        "low": test["low"],
        "cond": test["cond"],
        "s": test["s"],
        "s_a": test["s_a"],
        "s_b": test["s_b"],
        "meta": np.asarray(json.dumps(test["meta"])),
    }
    target = Path(args.heldout)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = write_npz(target, **heldout)
    log_copy = Path(args.export).with_name(Path(args.export).name + "_log.jsonl")
    write_text(log_copy, (run / "log.jsonl").read_text())
    print(json.dumps(record["heldout"], indent=1))
    print(f"wrote {out}, {target}, {log_copy}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("runs/scatter_data"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/scatter"))
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--widths", type=int, nargs="+", default=list(scatter_net.ScatterNetConfig().widths))
    ap.add_argument("--export", type=Path, default=None, help="write the best weights here and stop")
    ap.add_argument("--heldout", type=Path, default=Path("tests/data/scatter_heldout.npz"))
    args = ap.parse_args(argv)
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
