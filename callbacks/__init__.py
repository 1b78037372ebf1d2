"""Callbacks that monitor Born-Again chains (and any plain `model.fit`)."""

from callbacks.generation import GenerationCallback
from callbacks.progress import TqdmProgress
from callbacks.tensorboard import GenerationTensorBoard

__all__ = ["GenerationCallback", "GenerationTensorBoard", "TqdmProgress"]
