"""The Born-Again chain: its runner, run directory, records and results.

`GenerationRunner` runs the procedure; `ChainDirectory` owns every file of
a run; `GenerationResult` is what a run returns.
"""

from kdtrain import lazy

# Loaded on first use: the run directory's files can be read (a finished
# run's table, `kdtrain report`) without TensorFlow.
_NAMES = {
    "ChainDirectory": "kdtrain.chain.directory",
    "ConfigurationMismatch": "kdtrain.chain.errors",
    "DirectoryLocked": "kdtrain.chain.errors",
    "RunDirectoryError": "kdtrain.chain.errors",
    "TrainingDiverged": "kdtrain.chain.errors",
    "WorkerFailure": "kdtrain.chain.errors",
    "Generation": "kdtrain.chain.generation",
    "GenerationResult": "kdtrain.chain.results",
    "GenerationRunner": "kdtrain.chain.runner",
}

__all__ = [
    "ChainDirectory",
    "ConfigurationMismatch",
    "DirectoryLocked",
    "Generation",
    "GenerationResult",
    "GenerationRunner",
    "RunDirectoryError",
    "TrainingDiverged",
    "WorkerFailure",
]

__getattr__, __dir__ = lazy.attributes(__name__, _NAMES)
