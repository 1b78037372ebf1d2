"""kdtrain: knowledge distillation and Born-Again Networks for Keras 3.

The public names load lazily, so `kdtrain --help` answers before
TensorFlow starts.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "cache", "data", "distribute", "ensemble", "features", "generations",
    "losses", "models", "outputs", "seed_api",
)
_NAMES = {
    "Distiller": "kdtrain.distiller",
    "GenerationEnsemble": "kdtrain.ensemble",
    "ConfigurationMismatch": "kdtrain.generations",
    "GenerationResult": "kdtrain.generations",
    "GenerationRunner": "kdtrain.generations",
    "TeacherOutputCache": "kdtrain.cache",
    "TrainingDiverged": "kdtrain.generations",
    "WorkerFailure": "kdtrain.generations",
    "BANEnsemble": "kdtrain.seed_api",
    "ban": "kdtrain.seed_api",
    "distil_knowledge": "kdtrain.seed_api",
}

__all__ = sorted(_NAMES) + list(_SUBMODULES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"kdtrain.{name}")
    raise AttributeError(f"module 'kdtrain' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
