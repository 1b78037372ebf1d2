"""Callbacks that monitor Born-Again chains (and any plain `model.fit`)."""

from kdtrain import lazy

# Loaded on first use, so that `kdtrain.callbacks.generation` (names only)
# imports without TensorFlow.
_NAMES = {
    "GenerationCallback": ".generation",
    "GenerationTensorBoard": ".tensorboard",
    "TqdmProgress": ".progress",
}

__all__ = ["GenerationCallback", "GenerationTensorBoard", "TqdmProgress"]

__getattr__, __dir__ = lazy.attributes(__name__, _NAMES)
