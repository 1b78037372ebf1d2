"""kdtrain: knowledge distillation and Born-Again Networks for Keras 3.

The public names load lazily, so `kdtrain --help` answers before
TensorFlow starts.
"""

import importlib

__version__ = "0.2.0"

_SUBMODULES = (
    "cache", "chain", "data", "distribute", "ensemble", "features",
    "losses", "models", "outputs", "report", "seed_api",
)
_NAMES = {
    "Distiller": "kdtrain.distiller",
    "GenerationEnsemble": "kdtrain.ensemble",
    "ChainDirectory": "kdtrain.chain",
    "ConfigurationMismatch": "kdtrain.chain",
    "DirectoryLocked": "kdtrain.chain",
    "GenerationResult": "kdtrain.chain",
    "GenerationRunner": "kdtrain.chain",
    "RunDirectoryError": "kdtrain.chain",
    "TeacherOutputCache": "kdtrain.cache",
    "TrainingDiverged": "kdtrain.chain",
    "WorkerFailure": "kdtrain.chain",
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
