"""Distillation losses: how far the student is from the teacher.

`kdtrain.losses.distillation` holds the losses on the outputs (soft targets,
KL·T², optionally on standardized logits, logits MSE) and their base class
`DistillationLoss`; `ban` the Born-Again variants (CWTM, DKPP); `decoupled`
the losses that treat the target class apart (DKD, NKD); `correlation`
DIST's Pearson correlations; `features` the losses between intermediate
outputs (attention transfer, hints). `get` resolves a name.
"""

import keras

from kdtrain.losses.ban import ConfidenceWeighted
from kdtrain.losses.ban import PermutedPredictions
from kdtrain.losses.correlation import CorrelationKD
from kdtrain.losses.decoupled import DecoupledKD
from kdtrain.losses.decoupled import NormalizedKD
from kdtrain.losses.distillation import DistillationLoss
from kdtrain.losses.distillation import KLDivergence
from kdtrain.losses.distillation import LogitsMSE
from kdtrain.losses.distillation import SoftTargets
from kdtrain.losses.distillation import _TemperatureLoss
from kdtrain.losses.distillation import log_distribution
from kdtrain.losses.distillation import standardize_logits
from kdtrain.losses.distillation import validate_positive
from kdtrain.losses.distillation import validate_temperature
from kdtrain.losses.features import AttentionTransfer
from kdtrain.losses.features import FeatureLoss
from kdtrain.losses.features import HintLoss
from kdtrain.losses.features import attention_map
from kdtrain.losses.features import layer_pairs

__all__ = [
    "ALIASES",
    "AttentionTransfer",
    "ConfidenceWeighted",
    "CorrelationKD",
    "DecoupledKD",
    "DistillationLoss",
    "FeatureLoss",
    "HintLoss",
    "KLDivergence",
    "LogitsMSE",
    "NormalizedKD",
    "PermutedPredictions",
    "SoftTargets",
    "attention_map",
    "get",
    "layer_pairs",
    "log_distribution",
    "standardize_logits",
    "validate_positive",
    "validate_temperature",
]

ALIASES = {
    "soft_targets": SoftTargets,
    "kl": KLDivergence,
    "logits_mse": LogitsMSE,
    "cwtm": ConfidenceWeighted,
    "dkpp": PermutedPredictions,
    "dkd": DecoupledKD,
    "dist": CorrelationKD,
    "nkd": NormalizedKD,
}


def get(identifier, **kwargs):
    """Returns a `DistillationLoss` from a name, a config or an instance.

    Args:
        identifier: A `DistillationLoss` instance (returned as is), one of
            the names in `ALIASES` (`"soft_targets"`, `"kl"`,
            `"logits_mse"`, `"cwtm"`, `"dkpp"`, `"dkd"`, `"dist"`,
            `"nkd"`), or a serialized loss config.
        **kwargs: Constructor arguments for a named loss, e.g.
            `temperature=3.0` or `standardize=True`.

    Returns:
        A `DistillationLoss` instance.

    Example:

    >>> kdtrain.losses.get("kl", temperature=2.0).temperature
    2.0
    """
    if isinstance(identifier, DistillationLoss):
        if kwargs:
            raise ValueError(
                "Constructor arguments go with a loss name, not with a loss "
                f"instance. Received: identifier={identifier!r}, "
                f"kwargs={kwargs!r}"
            )
        return identifier
    if isinstance(identifier, str):
        if identifier not in ALIASES:
            raise ValueError(
                f"Unknown distillation loss: {identifier!r}. Valid names: "
                f"{', '.join(repr(name) for name in ALIASES)}; or pass a "
                "kdtrain.losses.DistillationLoss instance."
            )
        loss_class = ALIASES[identifier]
        if "temperature" in kwargs and kwargs["temperature"] is None:
            kwargs.pop("temperature")
        if "temperature" in kwargs and not issubclass(
            loss_class, _TemperatureLoss
        ):
            raise ValueError(
                f"The distillation loss {identifier!r} has no temperature. "
                f"Received: temperature={kwargs['temperature']!r}"
            )
        return loss_class(**kwargs)
    if isinstance(identifier, dict):
        loss = keras.saving.deserialize_keras_object(identifier)
        if isinstance(loss, DistillationLoss):
            return loss
    raise ValueError(
        "`distillation_loss` must be a kdtrain.losses.DistillationLoss, one "
        f"of {', '.join(repr(name) for name in ALIASES)}, or a serialized "
        f"DistillationLoss. Received: distillation_loss={identifier!r}"
    )
