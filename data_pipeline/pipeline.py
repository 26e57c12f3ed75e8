"""The Grain video pipeline: source -> shard -> shuffle/repeat -> decode + views + tokenize ->
skip bad records -> bucket-pad + batch -> worker processes -> global ``jax.Array`` batch.

Build it with :func:`make_iterator` (or :func:`build_dataset` for the bare Grain dataset). See
docs/data_pipeline.md for the batch layout. Determinism: the record order depends only on
``(seed, epoch)`` (``MapDataset.shuffle`` re-seeded per epoch by ``repeat``), and the per-example
RNG handed to an optional ``augment`` hook is ``np.random.default_rng([seed, epoch, index])``;
nothing depends on the worker count's timing, so a restored iterator replays the same stream.
"""


from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import numpy as np

from data_pipeline.batching import (  # noqa: F401 - the pipeline's public names, importable from here
    BatchAndSkip,
    NoUsableRecordsError,
    bucket_length,
    collate,
    common_length,
    pad_to_length,
)
from data_pipeline.examples import PrepareExample, decode_threads  # noqa: F401
from data_pipeline.pipeline_config import TEXT_KEYS, PipelineConfig  # noqa: F401
from data_pipeline.tokenizer import QwenTokenizer
from data_pipeline.worker_lifetime import exit_with_parent
from vlm3r_jax.sharding import DEFAULT_RULES, batch_sharding

log = logging.getLogger(__name__)

# --- the dataset -------------------------------------------------------------------------------
def ensure_absl_flags() -> None:
    # Grain's worker processes read absl flags; outside an absl app nobody parses them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def process_shard() -> tuple[int, int]:
    """(index, count) of this JAX process (grain's ShardByJaxProcess)."""
    opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return opts.shard_index, opts.shard_count


def build_dataset(
    source: Any,
    tokenizer: QwenTokenizer,
    cfg: PipelineConfig,
    *,
    shard: tuple[int, int] | None = None,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
) -> grain.IterDataset:
    """The Grain pipeline for this process's shard (worker processes included)."""
    index, count = shard if shard is not None else process_shard()
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ValueError(f"shard=(index, count) needs 0 <= index < count, got {shard}")
    if cfg.batch_size % count:
        raise ValueError(f"global batch_size {cfg.batch_size} is not divisible by {count} processes")
    rows = cfg.batch_size // count
    n = len(source)
    if n == 0:
        raise ValueError("the source has no records")
    ds = grain.MapDataset.source(source)
    if count > 1:  # equal shard sizes keep every host in lock step
        ds = ds[: (n // count) * count][index::count]
    epoch_length = len(ds)
    if epoch_length == 0:
        raise ValueError(f"shard {index} of {count} gets no records: the source has {n}, fewer than the "
                         f"{count} shards")
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    if cfg.num_epochs != 1:
        ds = ds.repeat(cfg.num_epochs)
    ds = ds.map_with_index(PrepareExample(tokenizer, cfg, epoch_length, augment))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=2 * rows))
    it = BatchAndSkip(it, rows, cfg, tokenizer.pad_id, epoch_length)
    if cfg.worker_count > 0:
        ensure_absl_flags()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size),
            worker_init_fn=exit_with_parent,
        )
    return it


# --- the user-facing iterator: skip stats, epoch summaries, checkpointable ------------------------
class VideoBatchIterator(grain.DatasetIterator):
    """Yields host batches (numpy); keeps per-epoch skip counts; ``get_state``/``set_state`` are
    JSON-able, so ``grain.checkpoint.CheckpointSave/Restore`` (Orbax) save it with the train state."""

    def __init__(
        self,
        dataset: grain.IterDataset,
        log_fn: Callable[[str], None] | None = None,
        cfg: PipelineConfig | None = None,
        pad_id: int | None = None,
    ):
        self._it = dataset.__iter__()
        super().__init__(self._it)
        self._cfg, self._pad_id = cfg, pad_id
        self.last_local_length = 0  # this host's bucket before the cross-process agreement
        self._log = log_fn or log.info
        self.skips: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.examples: collections.Counter = collections.Counter()
        self.last_skipped: list[dict] = []
        self._epoch = 0

    def _record(self, skipped: list[dict]) -> None:
        for s in skipped:
            self.skips[int(s.get("epoch") or 0)][s["error"]] += 1
            self._log(f"data: skipped {s['error']} record {s.get('id') or ''} ({s.get('message')})")
        self.last_skipped = skipped

    def summary(self, epoch: int) -> str:
        c = self.skips.get(epoch, collections.Counter())
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(c.items())) or "none"
        return f"data epoch {epoch}: {self.examples[epoch]} examples, {sum(c.values())} skipped ({kinds})"

    def _advance_epoch(self, epoch: int) -> None:
        while self._epoch < epoch:
            self._log(self.summary(self._epoch))
            self._epoch += 1

    def __next__(self) -> dict:
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                self._log(self.summary(self._epoch))
                raise
            self._record(batch.pop("skipped", []))
            if "input_ids" in batch:
                break
        for e, v in zip(batch["epoch"].tolist(), batch["valid"].tolist(), strict=True):
            self.examples[int(e)] += int(v)
        self._advance_epoch(int(batch["epoch"].max()))
        # Each host pads its rows to the bucket of ITS longest row; the rows of one global batch
        # must share a length, so the hosts agree on the largest (= the bucket one process
        # reading the whole global batch would pick).
        self.last_local_length = int(batch["input_ids"].shape[1])
        if self._cfg is not None and jax.process_count() > 1:
            batch = pad_to_length(batch, common_length(self.last_local_length), self._cfg, self._pad_id)
        return batch

    def metrics(self) -> dict[str, int]:
        """Totals for the metrics writer: ``data/skipped``, ``data/skipped/<kind>``, ``data/examples``."""
        total: collections.Counter = collections.Counter()
        for c in self.skips.values():
            total.update(c)
        out = {"data/skipped": int(sum(total.values())), "data/examples": int(sum(self.examples.values()))}
        out.update({f"data/skipped/{k}": int(v) for k, v in total.items()})
        return out

    def get_state(self) -> dict:
        return {
            "grain": self._it.get_state(),
            "epoch": self._epoch,
            "skips": {str(e): dict(c) for e, c in self.skips.items()},
            "examples": {str(e): v for e, v in self.examples.items()},
        }

    def set_state(self, state: dict) -> None:
        self._it.set_state(state["grain"])
        self._epoch = int(state.get("epoch", 0))
        self.skips = collections.defaultdict(
            collections.Counter, {int(e): collections.Counter(c) for e, c in state.get("skips", {}).items()}
        )
        self.examples = collections.Counter({int(e): int(v) for e, v in state.get("examples", {}).items()})

    def start_prefetch(self) -> None:
        if hasattr(self._it, "start_prefetch"):
            self._it.start_prefetch()

    def close(self) -> None:
        """Stops the worker processes (also done at garbage collection, but not reliably)."""
        if hasattr(self._it, "close"):
            self._it.close()

    def __enter__(self) -> VideoBatchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_iterator(
    source: Any,
    tokenizer: QwenTokenizer,
    cfg: PipelineConfig,
    *,
    shard: tuple[int, int] | None = None,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
    log_fn: Callable[[str], None] | None = None,
) -> VideoBatchIterator:
    """The checkpointable host-batch iterator (see :class:`VideoBatchIterator`). With several JAX
    processes (and ``shard`` left to the default, one shard per process), every process must call
    ``next`` for every batch: the hosts agree on the batch's length bucket."""
    return VideoBatchIterator(build_dataset(source, tokenizer, cfg, shard=shard, augment=augment), log_fn, cfg,
                              tokenizer.pad_id)


# --- global arrays -----------------------------------------------------------------------------
def to_global_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh, rules: Any = None) -> dict:
    """Host batch (this process's rows) -> dict of global ``jax.Array`` sharded over the mesh's
    ``batch`` rule (``jax.make_array_from_process_local_data``); string fields stay numpy."""

    rules = DEFAULT_RULES if rules is None else rules
    out: dict[str, Any] = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf" and v.ndim >= 1:
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, rules), v)
        else:
            out[k] = v
    return out


# --- Orbax ---------------------------------------------------------------------------------------
def checkpoint_save_args(iterator: VideoBatchIterator) -> Any:
    """Orbax args that save the iterator state (grain's JSON handler; one file per process):
    ``mngr.save(step, args=ocp.args.Composite(state=..., data=checkpoint_save_args(it)))``."""
    return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator: VideoBatchIterator) -> Any:
    """Orbax args that restore into a freshly built iterator of the same pipeline config."""
    return grain.checkpoint.CheckpointRestore(iterator)
