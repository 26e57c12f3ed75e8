"""A toy training job for loop tests (run as a subprocess so it can be killed with SIGKILL).

usage: python tests/toy_train.py WORKDIR STEPS [CRASH_AT_STEP]
"""

import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import grain  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vlm3r_jax.layers import Embed, Linear  # noqa: E402
from vlm3r_jax.models.lora import LoRAConfig, attach_lora  # noqa: E402
from vlm3r_jax.train.loop import train  # noqa: E402
from vlm3r_jax.train.step import next_token_xent  # noqa: E402

V, D = 11, 8


class ToyLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = Embed(V, D, rngs=rngs)
        self.up_proj = Linear(D, 16, axes=("embed", "mlp"), rngs=rngs)
        self.fusion = Linear(16, D, axes=("mlp", "embed"), rngs=rngs)
        self.head = Linear(D, V, axes=("embed", "vocab"), use_bias=False, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        return self.head(h + self.fusion(jax.nn.gelu(self.up_proj(h))))


def make_batch(i):
    rng = np.random.default_rng(int(i))
    ids = rng.integers(0, V, (4, 6)).astype(np.int32)
    labels = ids.copy()
    labels[:, :3] = -100
    return {"input_ids": ids, "labels": labels}


def loss_fn(model, batch):
    return next_token_xent(model(batch["input_ids"]), batch["labels"])


def config(steps):
    c = ml_collections.ConfigDict()
    # micro-batches of 2 rows: data-parallel over 2 devices, the rest of the devices on tensor
    c.mesh = ml_collections.ConfigDict({"shape": {"data": 2, "tensor": -1}, "rules": None})
    c.train = ml_collections.ConfigDict(dict(
        steps=steps, grad_accum_steps=2, trainable=[r"fusion\..*"], save_every=1, keep=3, log_every=1,
        eval_every=1, seed=0, tensorboard=False, async_checkpoint=True))
    c.optim = ml_collections.ConfigDict(dict(lr=1e-2, warmup_ratio=0.2, weight_decay=0.0, max_grad_norm=1.0))
    return c


def main(workdir, steps, crash_at=None):
    model = ToyLM(nnx.Rngs(0))
    attach_lora(model, LoRAConfig(rank=2, alpha=4.0, dropout=0.1, targets=("up_proj",)), rngs=nnx.Rngs(1))
    it = iter(grain.MapDataset.range(10_000).map(make_batch).to_iter_dataset())

    def hook(step, _model):
        if crash_at is not None and step == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)  # mid async checkpoint write
        return {}

    return train(config(steps), workdir, model, loss_fn, it, eval_hook=hook, progress=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
