"""kdtrain: knowledge distillation and Born-Again Networks for Keras 3."""

from kdtrain import losses
from kdtrain import outputs
from kdtrain.distiller import Distiller

__version__ = "0.1.0"

__all__ = ["Distiller", "losses", "outputs"]
