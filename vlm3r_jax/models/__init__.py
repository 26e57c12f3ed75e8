"""Pure Flax NNX networks, one per file; every parameter carries ``logical_axes`` metadata."""
