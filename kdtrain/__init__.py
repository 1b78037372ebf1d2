"""kdtrain: knowledge distillation and Born-Again Networks for Keras 3.

The public names load lazily, so `kdtrain --help` answers before
TensorFlow starts.
"""

from kdtrain import lazy

__version__ = "0.3.0"

_SUBMODULES = (
    "cache", "chain", "data", "distribute", "ensemble", "export",
    "features", "losses", "macs", "models", "outputs", "parity", "report",
    "run_export", "run_models", "seed_api", "stats", "study", "study_report",
    "sweep", "tradeoff",
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
    "check_parity": "kdtrain.parity",
    "count_macs": "kdtrain.macs",
    "export_model": "kdtrain.export",
    "export_run": "kdtrain.run_export",
    "RunModels": "kdtrain.run_models",
}

__all__ = sorted(_NAMES) + list(_SUBMODULES)

__getattr__, __dir__ = lazy.attributes(
    __name__, {**_NAMES, **dict.fromkeys(_SUBMODULES)}
)
