"""AdamW with linear warmup + cosine decay and global-norm clipping (the paper's recipe:
lr 2e-5, warmup 3%, weight decay 0, clip 1.0, betas (0.9, 0.999), eps 1e-8)."""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(lr: float, total_steps: int, warmup_ratio: float = 0.03, warmup_steps: int | None = None,
                  final_lr_ratio: float = 0.0) -> optax.Schedule:
    total_steps = max(int(total_steps), 1)
    warm = int(warmup_steps if warmup_steps is not None else round(warmup_ratio * total_steps))
    warm = min(max(warm, 0), total_steps - 1) if total_steps > 1 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warm else lr, peak_value=lr, warmup_steps=warm,
        decay_steps=total_steps, end_value=lr * final_lr_ratio,
    )


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                               optax.Schedule]:
    """``cfg`` fields: lr, warmup_ratio, weight_decay, b1, b2, eps, max_grad_norm."""
    schedule = make_schedule(cfg.lr, total_steps, cfg.get("warmup_ratio", 0.03), cfg.get("warmup_steps", None))
    parts = []
    if cfg.get("max_grad_norm", 0.0):
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("eps", 1e-8),
                             weight_decay=cfg.get("weight_decay", 0.0)))
    return optax.chain(*parts), schedule
