"""Errors raised by the checkpoint loaders."""


class CheckpointError(ValueError):
    """A checkpoint does not match the model: missing, unexpected or mis-shaped tensors,
    an unknown model type, or an unsafe/corrupt file. The message names the file(s) and
    the tensor names involved, and says what to do."""
