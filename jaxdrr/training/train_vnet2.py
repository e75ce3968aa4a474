"""Trains the two-scale V-Net (context network + fine network) on random labelled CTs (resumable).

Not imported by the runtime. Run in the background; re-running the same command resumes::

    python -m jaxdrr.training.train_vnet2 --run-dir runs/vnet2
    python -m jaxdrr.training.train_vnet2 --run-dir runs/vnet2 --export jaxdrr/models/weights/vnet2

Data: :mod:`jaxdrr.training.vnet_data` (anatomical + procedural CTs, a fine 2 mm patch and a 6 mm
context patch of each; a pure function of (seed, step, index), so a resumed run sees the batches it
would have seen).

Loss: soft cross-entropy + soft multi-class Dice of the fine network, plus ``context_weight`` times
the same for the context network on its whole patch (deep supervision: the context probabilities
the fine network reads are trained to be class probabilities). The fine network reads the context
probabilities exactly as at inference (:func:`jaxdrr.models.vnet.upsample_context`, cropped with a
one-voxel margin so the interpolation matches the whole-volume one).

Weights: AdamW with warmup + cosine decay; an exponential moving average (EMA) of the weights is
kept, and the EMA weights are validated, selected and exported.

Validation and selection: the held-out synthetic CTs of :func:`jaxdrr.training.vnet_data.validation_set`
(every region of both families), through the inference path
(:func:`jaxdrr.models.vnet.predict_probabilities_grid`); the score is the mean bone Dice over them.
No real CT is used for training, tuning or selection.

Files in ``run_dir`` (atomic writes): ``config.json``; ``log.jsonl`` (appended, fsynced);
``checkpoint.msgpack`` + ``checkpoint.json`` (weights, EMA, optimiser state, step, best);
``best.msgpack`` + ``best.json`` (the best EMA weights and their scores); ``validation.npz`` (the
held-out set, generated once).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
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
from jaxdrr.training import vnet_data
from jaxdrr.training.train_vnet import confusion, log, scores_from_confusion, threshold_labels


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 40000
    batch: int = 2
    patch: int = 48
    context_patch: int = 48
    context_factor: int = 3
    p_anatomy: float = 0.65
    learning_rate: float = 2e-3
    warmup: int = 200
    weight_decay: float = 1e-5
    dice_weight: float = 1.0
    context_weight: float = 0.5
    ema_decay: float = 0.999
    seed: int = 0
    val_every: int = 250
    checkpoint_every: int = 20
    widths: tuple[int, ...] = (8, 16, 32, 48)
    convs_per_stage: tuple[int, ...] = (1, 1, 2, 2)
    context_widths: tuple[int, ...] = (8, 16, 24, 32)
    context_convs: tuple[int, ...] = (1, 1, 1, 2)
    groups: int = 4

    def network(self) -> vnet.VNetConfig:
        return vnet.VNetConfig(
            widths=self.widths,
            convs_per_stage=self.convs_per_stage,
            groups=self.groups,
            patch=64,
            overlap=16,
            tile_voxels=2_500_000,
            top_decoder_kernel=1,
            context_factor=self.context_factor,
            context_widths=self.context_widths,
            context_convs=self.context_convs,
            context_patch=64,
        )

    def data(self) -> vnet_data.DataConfig:
        return vnet_data.DataConfig(
            patch=self.patch,
            spacing_mm=self.network().spacing_mm,
            context_factor=self.context_factor,
            context_patch=self.context_patch,
            p_anatomy=self.p_anatomy,
        )


def batch_seeds(config: TrainConfig, step: int) -> list[tuple[int, int, int]]:
    return [(config.seed, step, b) for b in range(config.batch)]


class Prefetcher:
    """Generates the batches of steps start..end in a background thread (numpy releases the GIL)."""

    def __init__(self, config: TrainConfig, start: int, end: int, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        data = config.data()

        def work():
            for step in range(start, end):
                pairs = [vnet_data.training_pair(s, data) for s in batch_seeds(config, step)]
                batch = {k: np.stack([p[k] for p in pairs]) for k in pairs[0] if k != "family"}
                self.q.put((step, batch))

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def get(self):
        return self.q.get()


# ----------------------------------------------------------------------------------------------
# Loss


def _ce_dice(logits, target):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.mean(jnp.sum(target * log_p, axis=-1))
    p = jnp.exp(log_p)
    axes = tuple(range(logits.ndim - 1))
    inter = jnp.sum(p * target, axis=axes)
    denom = jnp.sum(p, axis=axes) + jnp.sum(target, axis=axes)
    present = jnp.sum(target, axis=axes) > 0.5
    dice = (2 * inter + 1.0) / (denom + 1.0)
    dice_loss = 1.0 - jnp.sum(jnp.where(present, dice, 0.0)) / jnp.maximum(jnp.sum(present), 1)
    return ce, dice_loss


def context_for_fine_patch(context_probs, config: TrainConfig):
    """Context probabilities [B, k, q, q, q] -> upsampled under the fine patch [B, p, p, p, k]."""
    r, p = config.context_factor, config.patch
    c0 = config.data().context_offset
    inner = p // r
    crop = context_probs[:, :, c0 - 1 : c0 + inner + 1, c0 - 1 : c0 + inner + 1, c0 - 1 : c0 + inner + 1]
    up = jax.vmap(lambda c: vnet.upsample_context(c, r, ((inner + 2) * r,) * 3))(crop)
    up = up[:, :, r : r + p, r : r + p, r : r + p]
    return jnp.moveaxis(up, 1, -1)


def loss_fn(weights, batch, net: vnet.VNetConfig, config: TrainConfig):
    ctx_logits = vnet.apply_context(weights, vnet.hu_features(batch["hu_context"]), net)
    ctx_ce, ctx_dice = _ce_dice(ctx_logits, batch["fractions_context"])
    ctx_probs = jnp.moveaxis(jax.nn.softmax(ctx_logits, axis=-1), -1, 1)
    features = jnp.concatenate(
        [vnet.hu_features(batch["hu"]), context_for_fine_patch(ctx_probs, config)], axis=-1
    )
    ce, dice = _ce_dice(vnet.apply(weights, features, net), batch["fractions"])
    loss = ce + config.dice_weight * dice + config.context_weight * (ctx_ce + config.dice_weight * ctx_dice)
    return loss, {"ce": ce, "dice_loss": dice, "context_ce": ctx_ce, "context_dice_loss": ctx_dice}


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
# Validation


def load_or_make_validation(run_dir: Path, spacing_mm: float) -> list[dict]:
    path = run_dir / "validation.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            return [
                {
                    "name": n,
                    "region": n.split("_", 1)[1],
                    "hu": z[f"{n}_hu"],
                    "fractions": z[f"{n}_fractions"],
                }
                for n in names
            ]
    val = vnet_data.validation_set(spacing_mm)
    arrays = {"names": np.array([v["name"] for v in val])}
    for v in val:
        arrays[f"{v['name']}_hu"] = v["hu"]
        arrays[f"{v['name']}_fractions"] = v["fractions"]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())
    return val


def evaluate(weights, net: vnet.VNetConfig, val: list[dict]) -> dict:
    """Per-volume and pooled scores of the network and the thresholds (argmax labels)."""
    k = len(net.classes)
    predict = jax.jit(lambda w, hu: vnet.predict_probabilities_grid(w, hu, net))
    per_volume, cm_net_all, cm_thr_all = {}, np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
    for v in val:
        probs = np.asarray(predict(weights, jnp.asarray(v["hu"])))
        truth = np.argmax(v["fractions"], axis=0)
        cm_net = confusion(np.argmax(probs, axis=0), truth, k)
        cm_thr = confusion(threshold_labels(v["hu"]), truth, k)
        cm_net_all += cm_net
        cm_thr_all += cm_thr
        net_s, thr_s = scores_from_confusion(cm_net, net.classes), scores_from_confusion(cm_thr, net.classes)
        per_volume[v["name"]] = {
            "bone_dice": net_s["dice"]["bone"],
            "bone_dice_thresholds": thr_s["dice"]["bone"],
            "misclassification": net_s["misclassification"],
            "misclassification_thresholds": thr_s["misclassification"],
            "metal_voxels_predicted": int(cm_net[:, 3].sum()),
        }
    bone = [s["bone_dice"] for s in per_volume.values()]
    return {
        "volumes": per_volume,
        "vnet": scores_from_confusion(cm_net_all, net.classes),
        "thresholds": scores_from_confusion(cm_thr_all, net.classes),
        "selection_score": float(np.nanmean(bone)),
        "min_bone_dice": float(np.nanmin(bone)),
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _to_bytes(tree) -> bytes:
    return serialization.to_bytes(jax.tree.map(np.asarray, tree))


def save_checkpoint(run_dir: Path, step: int, weights, ema, opt_state, best) -> None:
    write_bytes(
        run_dir / "checkpoint.msgpack", _to_bytes({"weights": weights, "ema": ema, "opt_state": opt_state})
    )
    write_json(run_dir / "checkpoint.json", {"step": step, "best": best})


def load_checkpoint(run_dir: Path, weights, ema, opt_state):
    path = run_dir / "checkpoint.msgpack"
    if not path.exists():
        return 0, weights, ema, opt_state, None
    target = {"weights": weights, "ema": ema, "opt_state": opt_state}
    state = serialization.from_bytes(target, path.read_bytes())
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    return meta["step"], state["weights"], state["ema"], state["opt_state"], meta.get("best")


def _read_config(run_dir: Path) -> TrainConfig:
    raw = json.loads((run_dir / "config.json").read_text())
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def train(config: TrainConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        if _read_config(run_dir) != config:
            raise SystemExit(f"{cfg_path} differs from this command's configuration; use another --run-dir")
    else:
        write_json(cfg_path, dataclasses.asdict(config), indent=2)
    net = config.network()
    opt = make_optimizer(config)
    weights = vnet.init_weights(net, seed=config.seed)
    ema = weights
    opt_state = opt.init(weights)
    start, weights, ema, opt_state, best = load_checkpoint(run_dir, weights, ema, opt_state)
    print(
        f"two-scale V-Net {vnet.count_parameters(weights)} parameters; starting at step {start}", flush=True
    )
    val = load_or_make_validation(run_dir, net.spacing_mm)

    @jax.jit
    def step_fn(weights, ema, opt_state, batch, step):
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(weights, batch, net, config)
        updates, opt_state = opt.update(grads, opt_state, weights)
        weights = optax.apply_updates(weights, updates)
        # EMA with a warm start: the decay grows from 0 to ema_decay, so early averages are not stale.
        decay = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, w: decay * e + (1.0 - decay) * w, ema, weights)
        return weights, ema, opt_state, loss, parts

    if start >= config.steps:
        print("already trained", flush=True)
        return
    data = Prefetcher(config, start, config.steps)
    t_last = time.time()
    for _ in range(start, config.steps):
        step, batch = data.get()
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        weights, ema, opt_state, loss, parts = step_fn(weights, ema, opt_state, batch, step)
        done = step + 1
        if done % 5 == 0 or done == start + 1:
            now = time.time()
            entry = {
                "step": done,
                "loss": float(loss),
                **{k: float(v) for k, v in parts.items()},
                "time": now,
            }
            log(run_dir, entry)
            print(f"step {done} loss {float(loss):.4f} ({now - t_last:.1f} s)", flush=True)
            t_last = now
        if done % config.val_every == 0 or done == config.steps:
            scores = evaluate(ema, net, val)
            log(run_dir, {"step": done, "val": scores, "time": time.time()})
            print(
                f"val step {done}: score {scores['selection_score']:.4f} min {scores['min_bone_dice']:.4f}",
                flush=True,
            )
            if best is None or scores["selection_score"] > best["selection_score"]:
                best = {"step": done, "selection_score": scores["selection_score"], "val": scores}
                write_bytes(run_dir / "best.msgpack", _to_bytes(ema))
                write_json(run_dir / "best.json", best)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(run_dir, done, weights, ema, opt_state, best)


def export(run_dir: Path, out: Path) -> None:
    """Writes the best EMA weights of a run as a package weights file, with their validation record."""
    config = _read_config(run_dir)
    net = config.network()
    weights = serialization.from_bytes(vnet.init_weights(net), (run_dir / "best.msgpack").read_bytes())
    meta = json.loads((run_dir / "best.json").read_text())
    scores = evaluate(weights, net, load_or_make_validation(run_dir, net.spacing_mm))  # recomputed now
    record = {
        "trained_on": "random anatomical + procedural synthetic CTs (jaxdrr.training.vnet_data); no real CT",
        "train_config": dataclasses.asdict(config),
        "step": meta["step"],
        "weights": "exponential moving average",
        "validation": {"volumes": [v[0] + "_" + v[1] for v in vnet_data.VALIDATION_VOLUMES], **scores},
        "command": f"python -m jaxdrr.training.train_vnet2 --run-dir {run_dir} --export {out}",
    }
    vnet.save_weights(out, weights, net, record)
    print(json.dumps(scores, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--lr", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--val-every", type=int, default=TrainConfig.val_every)
    parser.add_argument(
        "--export", type=Path, help="export the run's best EMA weights to this path stem and exit"
    )
    args = parser.parse_args(argv)
    if args.export:
        export(args.run_dir, args.export)
        return
    config = TrainConfig(
        steps=args.steps, batch=args.batch, learning_rate=args.lr, seed=args.seed, val_every=args.val_every
    )
    train(config, args.run_dir)


if __name__ == "__main__":
    main()
