"""Model zoo: Wide Residual Networks and `keras.applications` by name."""

from kdtrain.models.registry import available
from kdtrain.models.registry import build
from kdtrain.models.registry import register
from kdtrain.models.wide_resnet import WideResNet

__all__ = ["WideResNet", "available", "build", "register"]
