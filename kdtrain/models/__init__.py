"""Model zoo: Wide Residual Networks and `keras.applications` by name."""

from kdtrain import lazy

# Loaded on first use: `kdtrain.models.names` reads without TensorFlow.
_NAMES = {
    "WideResNet": "kdtrain.models.wide_resnet",
    "available": "kdtrain.models.registry",
    "build": "kdtrain.models.registry",
    "register": "kdtrain.models.registry",
}

__all__ = ["WideResNet", "available", "build", "register"]

__getattr__, __dir__ = lazy.attributes(__name__, _NAMES)
