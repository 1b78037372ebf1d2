"""The errors that stop a chain, phrased in the words of the user's interface.

A message that suggests a setting says it the way the user gives it:
`overwrite=True` to a Python caller, `--overwrite` on the command line.
`RunDirectoryError.describe("cli")` gives the command line's wording.
"""

# How each interface spells the settings a message may suggest.
SPELLINGS = {
    "python": {
        "{overwrite}": "`overwrite=True`",
        "{retrain_from}": "`retrain_from={generation}`",
        "{directory}": "another `directory`",
    },
    "cli": {
        "{overwrite}": "--overwrite",
        "{retrain_from}": "--retrain-from {generation}",
        "{directory}": "another --directory",
    },
}


class ChainWarning(UserWarning):
    """A chain repaired something it found damaged (a backup, a cache, a
    results file) and says what it did instead."""


class RunDirectoryError(ValueError):
    """A run directory that kdtrain cannot use as it is; nothing was changed.

    Raised before anything is trained or written: files kdtrain did not
    write, a model file that changed or is missing, a damaged record, a
    directory that cannot be written.

    Attributes:
        directory: The run directory.
        generation: The generation a suggested retrain starts from, or None.
    """

    def __init__(self, message, directory=None, generation=None):
        self.template = message
        self.directory = directory
        self.generation = generation
        super().__init__(self.describe("python"))

    def describe(self, interface="python"):
        """The message, its remedies spelled for `"python"` or `"cli"`."""
        text = self.template
        for placeholder, words in SPELLINGS[interface].items():
            text = text.replace(
                placeholder, words.format(generation=self.generation)
            )
        return text


class ConfigurationMismatch(RunDirectoryError):
    """A chain directory was made by a different configuration."""


class DirectoryLocked(RunDirectoryError):
    """Another process is writing the run directory.

    Attributes:
        pid: The process holding the lock, or None if it has not said yet.
    """

    def __init__(self, message, directory=None, pid=None):
        super().__init__(message, directory)
        self.pid = pid


class ChainStopped(RuntimeError):
    """A chain stopped while training; finished generations are kept.

    Attributes:
        generation: The generation that was training (0 is the teacher).
        directory: Where the finished generations are saved, or None.
    """

    def __init__(self, message, generation=None, directory=None):
        super().__init__(message)
        self.generation = generation
        self.directory = directory


class TrainingDiverged(ChainStopped):
    """A generation's loss became NaN or infinite; the chain stopped."""


class WorkerFailure(ChainStopped):
    """Multi-worker training lost a worker; the chain stopped."""
