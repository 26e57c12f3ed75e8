"""Train state, step, loop, optimizer, Orbax checkpointing and metrics (JSONL, console, TensorBoard)."""
