"""Trains the material-decomposition V-Net on procedural synthetic CTs (resumable).

Not imported by the runtime. Run (background, resumable; re-running the same command resumes)::

    python -m jaxdrr.training.train_vnet --run-dir runs/vnet --steps 3000
    python -m jaxdrr.training.train_vnet --run-dir runs/vnet --export jaxdrr/models/weights/vnet_default

Data: every training patch is a fresh :func:`jaxdrr.phantoms.synthetic.synthetic_ct` (random
region, anatomy and scanner) whose seed is a function of (run seed, step, batch index), so a
resumed run sees exactly the batches it would have seen. Patches get random axis flips and
permutations, because a CT's voxel axes may come in any order and the network must not rely on it.

Loss: soft cross-entropy against the partial-volume fractions + soft multi-class Dice (the Dice
term keeps the rare classes, bone and metal, from being drowned by air and soft tissue).

Validation: a fixed set of held-out synthetic CTs (seeds disjoint from training); per-class Dice
and voxel misclassification of the argmax, beside the threshold baseline on the same volumes.
No real CT is used for training, tuning or selection.

Checkpoints (``run_dir/checkpoint.msgpack``: weights, optimiser state, step) and the log
(``run_dir/log.jsonl``) are written atomically, so killing the job loses at most one interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxdrr.atomic import write_bytes, write_json
from jaxdrr.models import vnet
from jaxdrr.phantoms import synthetic

VAL_SEED_BASE = 10_000_000  # validation seeds: VAL_SEED_BASE + i, never used for training
TRAIN_SEED_STRIDE = 1_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch: int = 2
    patch: int = 48
    learning_rate: float = 2e-3
    warmup: int = 100
    weight_decay: float = 1e-5
    dice_weight: float = 1.0
    seed: int = 0
    val_every: int = 100
    val_count: int = 12
    val_shape: int = 64
    checkpoint_every: int = 25
    widths: tuple[int, ...] = (8, 16, 32, 64)
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)
    groups: int = 4

    def network(self) -> vnet.VNetConfig:
        return vnet.VNetConfig(widths=self.widths, convs_per_stage=self.convs_per_stage, groups=self.groups)


# ----------------------------------------------------------------------------------------------
# Data


def training_sample(seed: int, patch: int, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (hu [p, p, p], fractions [p, p, p, classes]) training pair."""
    ct = synthetic.synthetic_ct(seed, shape=(patch, patch, patch), spacing_mm=(spacing_mm,) * 3)
    rng = np.random.default_rng([seed, 7])
    hu = ct.hu
    frac = np.moveaxis(ct.fractions, 0, -1)
    perm = rng.permutation(3)
    hu = np.transpose(hu, perm)
    frac = np.transpose(frac, (*perm, 3))
    for axis in range(3):
        if rng.random() < 0.5:
            hu = np.flip(hu, axis)
            frac = np.flip(frac, axis)
    return np.ascontiguousarray(hu, np.float32), np.ascontiguousarray(frac, np.float32)


def batch_seeds(config: TrainConfig, step: int) -> list[int]:
    return [(config.seed * 1_000_003 + step) * TRAIN_SEED_STRIDE + b for b in range(config.batch)]


class Prefetcher:
    """Generates batches for steps start..end in a background thread (numpy releases the GIL)."""

    def __init__(self, config: TrainConfig, start: int, end: int, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        spacing = config.network().spacing_mm

        def work():
            for step in range(start, end):
                pairs = [training_sample(s, config.patch, spacing) for s in batch_seeds(config, step)]
                self.q.put((step, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])))

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def get(self):
        return self.q.get()


def validation_set(count: int, shape: int, spacing_mm: float):
    out = []
    for i in range(count):
        ct = synthetic.synthetic_ct(
            VAL_SEED_BASE + i,
            region=synthetic.REGIONS[i % len(synthetic.REGIONS)],
            shape=(shape,) * 3,
            spacing_mm=(spacing_mm,) * 3,
        )
        out.append((ct.hu, ct.fractions))
    return out


# ----------------------------------------------------------------------------------------------
# Metrics (hard labels = argmax of fractions), shared with the evaluation tools.


def confusion(pred_labels: np.ndarray, true_labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true_labels.ravel() * k + pred_labels.ravel(), minlength=k * k).reshape(k, k)


def scores_from_confusion(cm: np.ndarray, names) -> dict:
    """Per-class Dice (NaN where a class is absent from both) and voxel misclassification."""
    tp = np.diag(cm).astype(np.float64)
    dice = {}
    for i, n in enumerate(names):
        denom = cm[i, :].sum() + cm[:, i].sum()
        dice[n] = float(2 * tp[i] / denom) if denom > 0 else float("nan")
    return {
        "dice": dice,
        "misclassification": float(1.0 - tp.sum() / cm.sum()),
        "voxels": int(cm.sum()),
        "truth_voxels": {n: int(cm[i, :].sum()) for i, n in enumerate(names)},
    }


def threshold_labels(hu: np.ndarray, thresholds=(-800.0, 350.0, 2500.0)) -> np.ndarray:
    """DeepDRR's hard thresholds extended with metal: air <= -800 < soft <= 350 < bone <= 2500 < metal."""
    return np.searchsorted(np.asarray(thresholds), hu, side="left").astype(np.int64)


def evaluate(weights, net: vnet.VNetConfig, val) -> dict:
    k = len(net.classes)
    cm_net = np.zeros((k, k), np.int64)
    cm_thr = np.zeros((k, k), np.int64)
    margins = []
    predict = jax.jit(lambda w, hu: vnet.predict_probabilities_grid(w, hu, net))
    for hu, frac in val:
        probs = np.asarray(predict(weights, jnp.asarray(hu)))
        truth = np.argmax(frac, axis=0)
        cm_net += confusion(np.argmax(probs, axis=0), truth, k)
        cm_thr += confusion(threshold_labels(hu), truth, k)
        top2 = np.sort(probs, axis=0)[-2:]
        margins.append(top2[1] - top2[0])
    margins = np.concatenate([m.ravel() for m in margins])
    return {
        "vnet": scores_from_confusion(cm_net, net.classes),
        "thresholds": scores_from_confusion(cm_thr, net.classes),
        # voxels whose top-2 probabilities are within 1e-4: the only ones a different CPU or jax
        # version could flip (the reproduction test bounds the score change by this count).
        "near_ties": int(np.sum(margins < 1e-4)),
    }


# ----------------------------------------------------------------------------------------------
# Loss and step


def loss_fn(weights, hu, target, net: vnet.VNetConfig, dice_weight: float):
    logits = vnet.apply(weights, vnet.hu_features(hu), net)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.mean(jnp.sum(target * log_p, axis=-1))
    p = jnp.exp(log_p)
    axes = (0, 1, 2, 3)
    inter = jnp.sum(p * target, axis=axes)
    denom = jnp.sum(p, axis=axes) + jnp.sum(target, axis=axes)
    present = jnp.sum(target, axis=axes) > 0.5
    dice = (2 * inter + 1.0) / (denom + 1.0)
    dice_loss = 1.0 - jnp.sum(jnp.where(present, dice, 0.0)) / jnp.maximum(jnp.sum(present), 1)
    return ce + dice_weight * dice_loss, (ce, dice_loss)


def make_optimizer(config: TrainConfig):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        config.learning_rate,
        config.warmup,
        max(config.steps, config.warmup + 1),
        config.learning_rate * 0.02,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay)
    )


# ----------------------------------------------------------------------------------------------
# Checkpoints and log (atomic writes)


def save_checkpoint(run_dir: Path, step: int, weights, opt_state, best: dict | None) -> None:
    state = {"weights": weights, "opt_state": opt_state}
    blob = serialization.to_bytes(jax.tree.map(np.asarray, state))
    write_bytes(run_dir / "checkpoint.msgpack", blob)
    write_json(run_dir / "checkpoint.json", {"step": step, "best": best})


def load_checkpoint(run_dir: Path, weights, opt_state):
    path = run_dir / "checkpoint.msgpack"
    if not path.exists():
        return 0, weights, opt_state, None
    target = {"weights": weights, "opt_state": opt_state}
    state = serialization.from_bytes(target, path.read_bytes())
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    return meta["step"], state["weights"], state["opt_state"], meta.get("best")


def log(run_dir: Path, entry: dict) -> None:
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _selection_score(scores: dict) -> float:
    # Mean Dice over air, soft tissue and bone (metal is rare in validation crops; it is reported).
    d = scores["vnet"]["dice"]
    return float(np.nanmean([d["air"], d["soft_tissue"], d["bone"]]))


def train(config: TrainConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        saved = json.loads(cfg_path.read_text())
        if saved != json.loads(json.dumps(dataclasses.asdict(config))):
            raise SystemExit(f"{cfg_path} differs from this command's configuration; use another --run-dir")
    else:
        write_json(cfg_path, dataclasses.asdict(config), indent=2)
    net = config.network()
    opt = make_optimizer(config)
    weights = vnet.init_weights(net, seed=config.seed)
    opt_state = opt.init(weights)
    start, weights, opt_state, best = load_checkpoint(run_dir, weights, opt_state)
    print(f"V-Net {vnet.count_parameters(weights)} parameters; starting at step {start}", flush=True)
    val = validation_set(config.val_count, config.val_shape, net.spacing_mm)

    @jax.jit
    def step_fn(weights, opt_state, hu, target):
        (loss, (ce, dl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            weights, hu, target, net, config.dice_weight
        )
        updates, opt_state = opt.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state, loss, ce, dl

    if start >= config.steps:
        print("already trained", flush=True)
        return
    data = Prefetcher(config, start, config.steps)
    t_last = time.time()
    for _ in range(start, config.steps):
        step, hu, target = data.get()
        weights, opt_state, loss, ce, dl = step_fn(weights, opt_state, jnp.asarray(hu), jnp.asarray(target))
        done = step + 1
        if done % 5 == 0 or done == 1:
            now = time.time()
            log(
                run_dir,
                {"step": done, "loss": float(loss), "ce": float(ce), "dice_loss": float(dl), "time": now},
            )
            print(
                f"step {done} loss {float(loss):.4f} ce {float(ce):.4f} dice {float(dl):.4f} "
                f"({(now - t_last):.1f} s)",
                flush=True,
            )
            t_last = now
        if done % config.val_every == 0 or done == config.steps:
            scores = evaluate(weights, net, val)
            score = _selection_score(scores)
            log(run_dir, {"step": done, "val": scores, "selection_score": score, "time": time.time()})
            print(
                f"val step {done}: {json.dumps(scores['vnet'])} thresholds {json.dumps(scores['thresholds'])}",
                flush=True,
            )
            if best is None or score > best["selection_score"]:
                best = {"step": done, "selection_score": score, "val": scores}
                write_bytes(
                    run_dir / "best.msgpack", serialization.to_bytes(jax.tree.map(np.asarray, weights))
                )
                write_json(run_dir / "best.json", best)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(run_dir, done, weights, opt_state, best)


def export(run_dir: Path, out: Path, which: str = "best") -> None:
    """Copies the best (or last) weights of a run into a package weights file with its record."""
    config = TrainConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in json.loads((run_dir / "config.json").read_text()).items()
        }
    )
    net = config.network()
    template = vnet.init_weights(net, seed=0)
    if which == "best":
        weights = serialization.from_bytes(template, (run_dir / "best.msgpack").read_bytes())
        meta = json.loads((run_dir / "best.json").read_text())
    else:
        opt = make_optimizer(config)
        step, weights, _, _ = load_checkpoint(run_dir, template, opt.init(template))
        meta = {"step": step}
    val = validation_set(config.val_count, config.val_shape, net.spacing_mm)
    scores = evaluate(weights, net, val)  # recomputed now, so the record matches the exported weights
    record = {
        "trained_on": "procedural synthetic CTs (jaxdrr.phantoms.synthetic); no real CT",
        "train_config": dataclasses.asdict(config),
        "step": meta["step"],
        "validation": {
            "seeds": [VAL_SEED_BASE, VAL_SEED_BASE + config.val_count],
            "shape": config.val_shape,
            **scores,
        },
        "command": f"python -m jaxdrr.training.train_vnet --run-dir {run_dir} --export {out}",
    }
    vnet.save_weights(out, weights, net, record)
    print(json.dumps(record["validation"], indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--patch", type=int, default=TrainConfig.patch)
    parser.add_argument("--lr", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--val-every", type=int, default=TrainConfig.val_every)
    parser.add_argument("--export", type=Path, help="export the run's weights to this path stem and exit")
    parser.add_argument("--which", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)
    if args.export:
        export(args.run_dir, args.export, args.which)
        return
    config = TrainConfig(
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        learning_rate=args.lr,
        seed=args.seed,
        val_every=args.val_every,
    )
    train(config, args.run_dir)


if __name__ == "__main__":
    main()
