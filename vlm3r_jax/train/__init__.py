"""Train state, step, loop, optimizer, Orbax checkpointing and clu metrics."""
