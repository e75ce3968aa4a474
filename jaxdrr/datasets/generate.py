"""The generator: plan shards, split them over processes, render batches, write shards in a thread.

The sample index space is CT-major: sample ``i`` is image ``i % images_per_ct`` of CT
``i // images_per_ct``. Each CT's images are cut into shards of ``output.shard_size`` (a shard
never spans two CTs); shard ``s`` belongs to process ``s % process_count``. A process skips the
shards whose manifest entry exists, so a rerun after a crash (any process count) renders exactly
the missing shards, and since sample ``i`` depends only on the spec and ``i``, the result is the
same as an uninterrupted run.

Per process: each CT is loaded and decomposed into material densities once, placed on the
device(s), then rendered batch by batch with one jitted, vmapped call
(:func:`jaxdrr.datasets.pipeline.make_batch_fn`); a writer thread converts finished batches to
NumPy and writes whole shards (:func:`jaxdrr.datasets.store.write_shard`) while the next batch
renders. Multi-process runs (``jax.distributed``) need no collectives until a final barrier,
after which process 0 writes ``manifest.json`` and ``coco.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from pathlib import Path

import jax
import numpy as np

from jaxdrr.datasets import store
from jaxdrr.datasets.spec import DatasetSpec, load_spec, spec_digest
from jaxdrr.errors import JaxdrrError

log = logging.getLogger("jaxdrr.datasets")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Samples ``first_index .. first_index + count - 1`` of CT ``ct_index``."""

    shard_id: int
    ct_index: int
    first_index: int
    count: int


def plan_shards(spec: DatasetSpec) -> list[Shard]:
    """All shards of a spec, in order (independent of the process count)."""
    shards = []
    per_ct, size = spec.images_per_ct, spec.output.shard_size
    for c in range(len(spec.cts)):
        for k in range(math.ceil(per_ct / size)):
            first = c * per_ct + k * size
            shards.append(Shard(len(shards), c, first, min(size, per_ct - k * size)))
    return shards


@dataclasses.dataclass
class Report:
    """What a :func:`generate` call did (this process).

    Times: ``seconds`` wall time; ``seconds_dispatching`` launching renders (asynchronous, so not
    the render time); ``seconds_writer_busy`` the writer thread converting to NumPy and writing
    shards (in parallel with rendering); ``seconds_waiting_for_writer`` the main thread blocked
    on a full writer queue or the final join (which includes waiting for the last renders).
    """

    process_index: int
    process_count: int
    shards_total: int
    shards_already_done: int = 0
    shards_written: int = 0
    samples_written: int = 0
    failed_cts: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    seconds_dispatching: float = 0.0
    seconds_writer_busy: float = 0.0
    seconds_waiting_for_writer: float = 0.0
    complete: bool = False

    @property
    def images_per_second(self) -> float:
        return self.samples_written / self.seconds if self.seconds > 0 else 0.0


def _prepare_output(spec: DatasetSpec, out: Path, num_shards: int, process_index: int) -> None:
    from jaxdrr import __version__

    for sub in (store.SHARD_DIR, store.FAILURE_DIR, store.LOG_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    digest = spec_digest(spec)
    spec_file = out / "spec.json"
    if spec_file.is_file():
        import json

        existing = json.loads(spec_file.read_text())
        if existing.get("digest") != digest:
            raise JaxdrrError(
                f"{out} holds a dataset made from a different spec (digest {existing.get('digest', '?')[:12]} "
                f"vs {digest[:12]}); use a new --out directory, or delete {out} to start over"
            )
    else:  # every process may write it (same content, atomic rename): no ordering needed
        store.write_json_atomic(
            spec_file,
            {
                "digest": digest,
                "spec": spec.to_dict(),
                "num_samples": spec.num_samples,
                "num_shards": num_shards,
                "jaxdrr_version": __version__,
            },
        )


def _file_logger(out: Path, process_index: int) -> logging.Handler:
    handler = logging.FileHandler(out / store.LOG_DIR / f"process-{process_index:03d}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s p%(process)d %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


class _Writer(threading.Thread):
    """Collects batches of device arrays, converts them to NumPy and writes whole shards."""

    def __init__(self, out: Path, compression: str, image_dtype: str, max_pending: int = 2):
        super().__init__(daemon=True, name="jaxdrr-dataset-writer")
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.out, self.compression, self.image_dtype = out, compression, image_dtype
        self.error: BaseException | None = None
        self.busy = 0.0  # seconds converting to NumPy and writing (overlaps the next render)
        self.device_wait = 0.0  # seconds waiting for batches still rendering
        self.written: list[dict] = []

    def run(self):
        pending: dict[int, list] = {}
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain: the main thread stops at its next put
            shard, batch, valid, attrs, entry, last = item
            t0 = time.perf_counter()
            try:
                # Dispatch is asynchronous: wait for the device first, so that ``busy`` counts
                # only the host's share (conversion and the HDF5 write).
                jax.block_until_ready(batch)
                t1 = time.perf_counter()
                self.device_wait += t1 - t0
                t0 = t1
                host = {k: np.asarray(v)[:valid] for k, v in batch.items()}
                pending.setdefault(shard.shard_id, []).append(host)
                if last:
                    parts = pending.pop(shard.shard_id)
                    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                    arrays = self._storage_types(arrays)
                    entry = store.write_shard(
                        self.out, shard.shard_id, arrays, attrs, entry, self.compression
                    )
                    self.written.append(entry)
                    log.info(
                        "wrote shard %d (%d samples from %d)", shard.shard_id, shard.count, shard.first_index
                    )
            except BaseException as e:  # reported to the main thread, which stops cleanly
                self.error = e
            finally:
                self.busy += time.perf_counter() - t0

    def _storage_types(self, arrays):
        for name in store.FLOAT16_FIELDS:
            if name in arrays:
                arrays[name] = arrays[name].astype(np.float16)
        if "masks" in arrays:
            arrays[store.PACKED_MASKS] = store.pack_masks(arrays.pop("masks"))
        if "tool_masks" in arrays:
            arrays["tool_masks"] = arrays["tool_masks"].astype(np.uint8)
        arrays["image"] = arrays["image"].astype(self.image_dtype)
        return arrays


def _load_ct_on_device(spec: DatasetSpec, entry, config, tool_objects=()):
    """Loads and decomposes one CT; returns (ct pytree for the sampler, assets).

    With ``tool_objects`` the pytree holds the scene of the density volume and the tools, the
    label indicators as a volume of their own, and the CT's bounding box
    (:func:`jaxdrr.datasets.pipeline.make_sample_fn`).
    """
    import jax.numpy as jnp

    from jaxdrr.datasets.sources import load_ct, one_hot
    from jaxdrr.materials.decomposition import decompose
    from jaxdrr.volume import Volume

    assets = load_ct(spec, entry)
    density = decompose(None, assets.volume, config.materials)
    data, names = jnp.asarray(density.data), density.channel_names
    if tool_objects:
        from jaxdrr.datasets.tools import ct_bounds
        from jaxdrr.scene import Scene

        volume = Volume(data=data, affine_key=density.affine_key, kind="density", channel_names=tuple(names))
        labels = None
        if assets.labels is not None and (spec.annotations.masks or spec.annotations.path_lengths):
            labels = Volume(
                data=jnp.asarray(one_hot(assets.labels, assets.label_ids), data.dtype),
                affine_key=density.affine_key,
                kind="density",
                channel_names=tuple(assets.label_names),
            )
        ct = {
            "scene": Scene.create(ct=volume, objects=tool_objects),
            "labels": labels,
            "bounds": jnp.asarray(ct_bounds(assets.volume), jnp.result_type(float)),
        }
    if (
        assets.labels is not None
        and not tool_objects
        and (spec.annotations.masks or spec.annotations.path_lengths)
    ):
        # Label indicators become extra channels of the same volume: one ray march gives the
        # material line integrals and the label path lengths.
        indicators = jnp.asarray(one_hot(assets.labels, assets.label_ids), data.dtype)
        data, names = jnp.concatenate([data, indicators]), (*names, *assets.label_names)
    volume = Volume(data=data, affine_key=density.affine_key, kind="density", channel_names=tuple(names))
    landmarks = None
    if assets.landmarks is not None and spec.annotations.landmarks:
        landmarks = jnp.asarray(assets.landmarks, jnp.result_type(float))
    iso = assets.volume.center if spec.pose.isocenter_mm == "center" else np.asarray(spec.pose.isocenter_mm)
    common = {"landmarks": landmarks, "isocenter": jnp.asarray(iso, jnp.result_type(float))}
    ct = {**ct, **common} if tool_objects else {"volume": volume, **common}
    return ct, assets


def _warn_scatter_range(spec: DatasetSpec) -> None:
    from jaxdrr.scatter.estimate import TRAINED_RANGE

    if spec.physics.scatter_probability <= 0:
        return
    checks = {"kvp": (min(spec.physics.kvp), max(spec.physics.kvp)), "sdd_mm": spec.pose.sdd_mm}
    for name, (lo, hi) in checks.items():
        tlo, thi = TRAINED_RANGE[name]
        if lo < tlo or hi > thi:
            log.warning(
                "%s range [%g, %g] leaves the scatter network's trained range [%g, %g]; its scatter "
                "estimate may be inaccurate there",
                name,
                lo,
                hi,
                tlo,
                thi,
            )


def generate(
    spec: DatasetSpec | str | Path,
    out: str | Path,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = True,
    write_final: bool = True,
) -> Report:
    """Generates (or resumes) a dataset.

    Args:
      spec: a :class:`DatasetSpec` or the path of a TOML/YAML spec.
      out: output directory (created; an existing one must hold the same spec).
      process_index, process_count: this process's share of the shards; default
        ``jax.process_index()`` / ``jax.process_count()`` (call ``jax.distributed.initialize()``
        first on a cluster; the CLI does).
      progress: show a progress bar (tqdm).
      write_final: write ``manifest.json`` and ``coco.json`` at the end (process 0, after a
        barrier across processes).

    Returns:
      A :class:`Report` of this process's work.

    Raises:
      SpecError / JaxdrrError: invalid spec, or ``out`` made from another spec.
      DatasetWriteError: the output folder or a shard could not be written (disk full,
        permissions); finished shards are kept and a rerun resumes.
    """
    from tqdm import tqdm  # plain text bar: works in terminals, logs and notebooks alike

    from jaxdrr.datasets import pipeline

    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    out = Path(out)
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pi < pc:
        raise JaxdrrError(f"process_index {pi} is not in [0, {pc})")
    shards = plan_shards(spec)
    try:
        _prepare_output(spec, out, len(shards), pi)
        handler = _file_logger(out, pi)
    except OSError as e:  # permissions, a file where the folder should be, a read-only disk
        raise store.DatasetWriteError(
            e.errno, f"cannot write the dataset to {out}: {e.strerror or e} ({e.filename or out})"
        ) from e
    t_start = time.perf_counter()
    report = Report(pi, pc, len(shards))
    try:
        done = store.completed_entries(out)
        mine = [s for s in shards if s.shard_id % pc == pi]
        report.shards_already_done = sum(s.shard_id in done for s in mine)
        todo = [s for s in mine if s.shard_id not in done]
        removed = store.remove_stale_temporaries(out, [s.shard_id for s in mine])
        log.info(
            "process %d/%d: %d shards of %d, %d already done, %d to render%s",
            pi,
            pc,
            len(mine),
            len(shards),
            report.shards_already_done,
            len(todo),
            f"; removed {removed} unfinished temporary file(s)" if removed else "",
        )
        _warn_scatter_range(spec)
        if todo:
            _render_shards(spec, out, todo, report, progress, tqdm, pipeline)
    finally:
        report.seconds = time.perf_counter() - t_start
        log.info(
            "process %d: wrote %d shards (%d samples) in %.1f s; writer busy %.1f s, waited %.1f s",
            pi,
            report.shards_written,
            report.samples_written,
            report.seconds,
            report.seconds_writer_busy,
            report.seconds_waiting_for_writer,
        )
        log.removeHandler(handler)
        handler.close()
    if write_final:
        if pc > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxdrr-dataset-finished")
        if pi == 0:
            report.complete = finalize(out, spec)
    return report


def _render_shards(spec, out, todo, report, progress, tqdm, pipeline) -> None:
    import jax.numpy as jnp

    from jaxdrr.datasets.tools import build_tools, tool_materials
    from jaxdrr.materials import as_material_config

    config = pipeline.render_config(spec)
    tool_objects, tool_geometry = build_tools(spec)
    tables = pipeline.physics_tables(spec, tool_materials(tool_geometry))
    n_dev = jax.local_device_count()
    B = spec.output.batch_size
    B = int(math.ceil(B / n_dev) * n_dev)  # the batch axis is split over the local devices
    writer = _Writer(out, spec.output.compression, spec.output.image_dtype)
    writer.start()
    digest = spec_digest(spec)
    material_names = as_material_config(spec.physics.materials).names
    bar = tqdm(
        total=sum(s.count for s in todo),
        disable=not progress,
        desc=f"process {report.process_index}",
        unit="img",
    )
    batch_fns: dict = {}
    try:
        by_ct: dict[int, list[Shard]] = {}
        for s in todo:
            by_ct.setdefault(s.ct_index, []).append(s)
        for ct_index, ct_shards in by_ct.items():
            entry = spec.cts[ct_index]
            failure_file = out / store.FAILURE_DIR / f"ct-{ct_index:04d}.json"
            try:
                ct, assets = _load_ct_on_device(spec, entry, config, tool_objects)
            except (JaxdrrError, OSError, ValueError) as e:
                message = f"{type(e).__name__}: {e}"
                log.error(
                    "CT %d (%s) failed, its %d shard(s) skipped: %s",
                    ct_index,
                    entry.name,
                    len(ct_shards),
                    message,
                )
                store.write_json_atomic(
                    failure_file, {"ct_index": ct_index, "ct": entry.name, "error": message}
                )
                report.failed_cts[entry.name] = message
                bar.update(sum(s.count for s in ct_shards))
                continue
            failure_file.unlink(missing_ok=True)
            nl = 0 if ct["landmarks"] is None else len(assets.landmark_names)
            if tool_geometry:
                nk = 0 if ct["labels"] is None else ct["labels"].data.shape[0]
            else:
                nk = ct["volume"].data.shape[0] - len(material_names)
            if (nl, nk) not in batch_fns:
                batch_fns[nl, nk] = pipeline.make_batch_fn(spec, nl, nk, tools=tool_geometry)
            fn = batch_fns[nl, nk]
            attrs = {
                "mask_count": nk if spec.annotations.masks else 0,
                "ct": entry.name,
                "ct_index": ct_index,
                "landmark_names": list(assets.landmark_names) if nl else [],
                "label_names": list(assets.label_names) if nk else [],
                "label_ids": list(assets.label_ids) if nk else [],
                # With tools, the line integrals' channels go on with one per tool material.
                "material_names": [*material_names, *tool_materials(tool_geometry)],
                "spec_digest": digest,
            }
            if tool_geometry:
                attrs.update(
                    tool_names=[g.name for g in tool_geometry],
                    tool_kinds=[g.kind for g in tool_geometry],
                    tool_keypoint_names=[list(g.keypoint_names) for g in tool_geometry],
                )
            log.info("CT %d (%s): %s, %d shard(s)", ct_index, entry.name, assets.volume.shape, len(ct_shards))
            for shard in ct_shards:
                shard_entry = {
                    "shard": shard.shard_id,
                    "ct": entry.name,
                    "ct_index": ct_index,
                    "first_index": shard.first_index,
                    "count": shard.count,
                    "process": report.process_index,
                    "spec_digest": digest,
                }
                for b0 in range(0, shard.count, B):
                    valid = min(B, shard.count - b0)
                    idx = shard.first_index + b0 + np.arange(B)
                    idx = np.minimum(idx, shard.first_index + shard.count - 1)  # pad with the last sample
                    t0 = time.perf_counter()
                    batch = fn(tables, ct, jnp.asarray(idx, jnp.int32))
                    report.seconds_dispatching += (
                        time.perf_counter() - t0
                    )  # asynchronous: not the render time
                    if writer.error is not None:
                        raise writer.error
                    last = b0 + B >= shard.count
                    t0 = time.perf_counter()
                    writer.queue.put((shard, batch, valid, attrs, shard_entry, last))
                    report.seconds_waiting_for_writer += time.perf_counter() - t0
                    bar.update(valid)
                if writer.error is not None:
                    raise writer.error
    finally:
        writer.queue.put(None)
        t0 = time.perf_counter()
        writer.join()
        report.seconds_waiting_for_writer += time.perf_counter() - t0
        bar.close()
        report.seconds_writer_busy = writer.busy
        report.shards_written = len(writer.written)
        report.samples_written = sum(e["count"] for e in writer.written)
    if writer.error is not None:
        raise writer.error


def finalize(out: str | Path, spec: DatasetSpec | None = None) -> bool:
    """Writes ``manifest.json`` (and ``coco.json`` if the spec asks) from the finished shards.

    Returns:
      Whether every shard is finished.
    """
    import json

    out = Path(out)
    info = json.loads((out / "spec.json").read_text())
    entries = store.completed_entries(out)
    failures = [json.loads(p.read_text()) for p in sorted((out / store.FAILURE_DIR).glob("ct-*.json"))]
    complete = len(entries) == info["num_shards"]
    store.write_json_atomic(
        out / "manifest.json",
        {
            "digest": info["digest"],
            "complete": complete,
            "num_samples": info["num_samples"],
            "num_shards": info["num_shards"],
            "samples_finished": sum(e["count"] for e in entries.values()),
            "shards": [entries[k] for k in sorted(entries)],
            "failed_cts": failures,
        },
    )
    coco = info["spec"]["output"]["coco"]
    if coco and entries:
        from jaxdrr.datasets.coco import write_coco

        write_coco(out)
    return complete
