"""Callbacks that monitor Born-Again chains (and any plain `model.fit`)."""

from .generation import GenerationCallback
from .progress import TqdmProgress
from .tensorboard import GenerationTensorBoard

__all__ = ["GenerationCallback", "GenerationTensorBoard", "TqdmProgress"]
