"""The Born-Again chain: its runner, run directory, records and results.

`GenerationRunner` runs the procedure; `ChainDirectory` owns every file of
a run; `GenerationResult` is what a run returns.
"""

from kdtrain.chain.directory import ChainDirectory
from kdtrain.chain.errors import ConfigurationMismatch
from kdtrain.chain.errors import DirectoryLocked
from kdtrain.chain.errors import RunDirectoryError
from kdtrain.chain.errors import TrainingDiverged
from kdtrain.chain.errors import WorkerFailure
from kdtrain.chain.generation import Generation
from kdtrain.chain.results import GenerationResult
from kdtrain.chain.runner import GenerationRunner

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
