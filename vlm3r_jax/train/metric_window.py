"""Step metrics read back in windows, so the host does not wait for the device every step.

The jitted step returns its metrics as device scalars. Converting one to a Python float blocks
until that step has finished, so a loop that does it every step keeps the device idle while the
host fetches the next batch and dispatches the next step. :class:`MetricWindow` keeps the last
steps' metrics on the device and reads them all at once when the loop needs them: at a logging
boundary, before a checkpoint is written (a checkpoint must never hold a state that came from a
non-finite loss), before an eval, and at the end. Timings are averaged over the window, which is
what a window of asynchronously dispatched steps can honestly report.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax

from vlm3r_jax.train import distributed


class NonFiniteLossError(RuntimeError):
    pass


@dataclasses.dataclass
class _Pending:
    step: int
    metrics: dict[str, jax.Array]
    data_wait: float
    flops: float | None  # model FLOPs of this step (for MFU), when known
    seq_tokens: float | None  # padded tokens of the global batch (MFU from FLOPs per token)


class MetricWindow:
    """Collects ``(step, device metrics)`` and turns them into rows on :meth:`flush`.

    ``flops_per_token`` / ``peak_flops`` give MFU as in :func:`vlm3r_jax.train.loop.train`."""

    def __init__(self, *, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.pending: list[_Pending] = []
        self.started = time.perf_counter()

    def add(self, step: int, metrics: dict[str, jax.Array], data_wait: float, *, flops: float | None = None,
            seq_tokens: float | None = None) -> None:
        self.pending.append(_Pending(step, metrics, data_wait, flops, seq_tokens))

    def flush(self, latest_good: int | None, directory: str) -> list[dict]:
        """Blocks on the window's last step and returns one row per step (``step``, every metric,
        ``step_time``, ``data_wait``, ``compute_time``, ``tokens_per_s``, ``mfu``). Raises
        :class:`NonFiniteLossError` naming the first step whose loss is not finite."""
        if not self.pending:
            return []
        jax.block_until_ready(self.pending[-1].metrics)
        now = time.perf_counter()
        window, self.pending = self.pending, []
        step_time = (now - self.started) / len(window)
        self.started = now
        rows = []
        for p in window:
            row = {k: float(distributed.to_host(v)) for k, v in p.metrics.items()}
            if not math.isfinite(row["loss"]):
                raise NonFiniteLossError(
                    f"loss became {row['loss']} at step {p.step}; stopping. The latest good checkpoint "
                    f"(step {latest_good}) is in {directory}. Lower optim.lr, raise "
                    "optim.warmup_ratio or check the data around this step.")
            compute = max(step_time - p.data_wait, 1e-9)
            row.update(step_time=step_time, data_wait=p.data_wait, compute_time=compute)
            row["tokens_per_s"] = row["tokens"] / compute
            if self.peak_flops and p.flops is not None:
                row["mfu"] = p.flops / compute / self.peak_flops
            elif self.peak_flops and self.flops_per_token:
                tokens = p.seq_tokens if p.seq_tokens is not None else row["tokens"]
                row["mfu"] = self.flops_per_token * tokens / compute / self.peak_flops
            rows.append({"step": p.step, **row})
        return rows
