"""The errors that stop a chain of generations."""


class TrainingDiverged(RuntimeError):
    """A generation's loss became NaN or infinite; the chain stopped.

    Attributes:
        generation: The generation that diverged (0 is the teacher).
        directory: Where the finished generations are saved, or None.
    """

    def __init__(self, message, generation=None, directory=None):
        super().__init__(message)
        self.generation = generation
        self.directory = directory


class ConfigurationMismatch(ValueError):
    """A chain directory was made by a different configuration."""


class WorkerFailure(RuntimeError):
    """Multi-worker training lost a worker; the chain stopped.

    Attributes:
        generation: The generation that was training (0 is the teacher).
        directory: Where the finished generations are saved, or None.
    """

    def __init__(self, message, generation=None, directory=None):
        super().__init__(message)
        self.generation = generation
        self.directory = directory
