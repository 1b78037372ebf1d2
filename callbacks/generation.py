"""`GenerationCallback`: the events of a whole Born-Again chain."""

import keras

from .names import generation_name  # noqa: F401 - part of this module


class GenerationCallback(keras.callbacks.Callback):
    """Base class of callbacks that follow a whole chain of generations.

    A `kdtrain.GenerationRunner` sends these events, besides Keras' own, to
    every callback of `run(callbacks=[...])` that defines them (and to its
    `tensorboard` and `progress` callbacks). Such a callback is shared by
    all generations instead of being copied for each: it sees the whole
    chain. Every method is optional; the defaults do nothing.

    Example:

    ```python
    class Announce(GenerationCallback):
        def on_generation_end(self, generation, logs=None):
            print(f"generation {generation}: loss {logs.get('loss')}")

    runner.run(train, epochs=10, callbacks=[Announce()])
    ```
    """

    def on_chain_begin(self, logs=None):
        """Called before the first generation.

        Args:
            logs: `models` (how many the chain holds, the teacher
                included), `finished` (how many are already trained and
                only loaded), `directory` (or None).
        """

    def on_generation_begin(self, generation, logs=None):
        """Called before generation `generation` trains (0 is the teacher).

        Args:
            generation: The generation; N + 1 for the student distilled
                from the ensemble (`distill_ensemble=True`).
            logs: `name` (`"teacher"`, `"gen-K"`, `"gen-ensemble"`) and
                `label` (`"BAN-K"`, `"Ensemble-distilled"`).
        """

    def on_generation_end(self, generation, logs=None):
        """Called when generation `generation` has trained.

        Args:
            generation: The generation.
            logs: The logs of its last epoch.
        """

    def on_evaluation(self, step, logs=None):
        """Called when a model or an ensemble has been evaluated.

        Args:
            step: The generation of a model; the last generation for an
                ensemble.
            logs: `name` (`"teacher"`, `"gen-K"`, `"ensemble"`,
                `"ensemble_with_teacher"`), `split` and `metrics` (a dict).
        """

    def on_chain_end(self, logs=None):
        """Called when the chain ends, also when it stopped on an error.

        Args:
            logs: `completed` (bool); when completed, `table` (the rows of
                `GenerationResult.table`), `hparams` (the configuration's
                main settings), `metrics` (the summary tags of the table)
                and `trained` (the generations trained in this run).
        """
