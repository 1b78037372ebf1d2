"""`GenerationTensorBoard`: one TensorBoard run per generation, plus a summary."""

import math
import os

import keras
import numpy as np

from .generation import GenerationCallback
from .generation import generation_name


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


class GenerationTensorBoard(GenerationCallback):
    """TensorBoard logs with one run per generation and a summary run.

    Each `fit` writes a run under `log_dir/gen-K` (`gen-K/train` and
    `gen-K/validation`) through `keras.callbacks.TensorBoard`: the epoch
    losses and metrics, e.g. the `Distiller`'s `loss`, `distillation_loss`,
    `ground_truth_loss` and `accuracy`. `log_dir/summary` holds a scalar per
    generation (the step is the generation): the final epoch's logs under
    `final/...` and, from `log_evaluation`, each model's evaluation (e.g.
    `test/accuracy`); `log_hparams` records a configuration with the HParams
    plugin. `tensorboard --logdir LOG_DIR` then compares the generations
    side by side.

    In a chain, a `GenerationRunner` sends it the chain's events
    (`GenerationCallback`): the generation before each `fit`, each model's
    evaluation, and the configuration at the end. With a plain `model.fit`,
    each `fit` call is the next generation, counted from
    `initial_generation`.

    Args:
        log_dir: The root directory of the runs.
        initial_generation: The generation of the first `fit` when nobody
            sets it. Defaults to 0.
        **tensorboard_kwargs: Arguments of `keras.callbacks.TensorBoard`
            (`histogram_freq`, `update_freq`, `write_graph`...).
            `write_graph` defaults to False.

    Example:

    ```python
    from kdtrain.callbacks import GenerationTensorBoard

    board = GenerationTensorBoard("logs")
    teacher.fit(x, y, epochs=10, callbacks=[board])          # logs/gen-0
    distiller.fit(x, y, epochs=10, callbacks=[board])        # logs/gen-1
    board.log_evaluation(1, distiller.evaluate(x_test, y_test,
                                               return_dict=True))
    ```
    """

    def __init__(self, log_dir, initial_generation=0, **tensorboard_kwargs):
        super().__init__()
        if "log_dir" in tensorboard_kwargs:
            raise TypeError("Pass `log_dir` once.")
        tensorboard_kwargs.setdefault("write_graph", False)
        self.log_dir = os.fspath(log_dir)
        self.tensorboard_kwargs = tensorboard_kwargs
        self.generation = None
        self._next_generation = int(initial_generation)
        self._board = None
        self._last_epoch_logs = None

    # Chain events -----------------------------------------------------------

    def on_generation_begin(self, generation, logs=None):
        self.set_generation(generation)

    def on_evaluation(self, step, logs=None):
        logs = logs or {}
        name, split = logs.get("name"), logs.get("split", "test")
        prefix = split if name in (None, "teacher") or str(name).startswith(
            "gen-"
        ) else f"{split}/{name}"
        self.log_scalars(int(step), logs.get("metrics") or {}, prefix)

    def on_chain_end(self, logs=None):
        logs = logs or {}
        if logs.get("completed") and logs.get("trained"):
            self.log_hparams(logs.get("hparams") or {}, logs.get("metrics"),
                             logs.get("trial_id"))

    # Generation bookkeeping -------------------------------------------------

    def set_generation(self, generation):
        """Sets the generation the next `fit` logs as (`gen-K`)."""
        self.generation = int(generation)

    @property
    def summary_dir(self):
        """The directory of the summary run."""
        return os.path.join(self.log_dir, "summary")

    def generation_dir(self, generation):
        """The directory of generation `generation`'s run."""
        return os.path.join(self.log_dir, generation_name(generation))

    # Forwarding to keras.callbacks.TensorBoard ----------------------------

    def on_train_begin(self, logs=None):
        if self.generation is None:
            self.generation = self._next_generation
        self._next_generation = self.generation + 1
        self._last_epoch_logs = None
        self._board = keras.callbacks.TensorBoard(
            log_dir=self.generation_dir(self.generation),
            **self.tensorboard_kwargs,
        )
        self._board.set_params(self.params)
        self._board.set_model(self.model)
        self._board.on_train_begin(logs)

    def on_train_end(self, logs=None):
        board, self._board = self._board, None
        if board is not None:
            board.on_train_end(logs)
        if self._last_epoch_logs:
            self.log_scalars(self.generation, self._last_epoch_logs, "final")
        self.generation = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._board is not None:
            self._board.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch_logs = dict(logs or {})
        if self._board is not None:
            self._board.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        if self._board is not None:
            self._board.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self._board is not None:
            self._board.on_train_batch_end(batch, logs)

    def on_test_begin(self, logs=None):
        if self._board is not None:
            self._board.on_test_begin(logs)

    def on_test_end(self, logs=None):
        if self._board is not None:
            self._board.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        if self._board is not None:
            self._board.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        if self._board is not None:
            self._board.on_test_batch_end(batch, logs)

    # The summary run --------------------------------------------------------

    def log_scalars(self, step, values, prefix):
        """Writes `prefix/name` scalars at `step` in the summary run.

        Args:
            step: The step, usually the generation.
            values: A dict of names to numbers; non-finite or non-numeric
                values are skipped.
            prefix: The tag prefix, e.g. `"test"`.
        """
        import tensorflow as tf

        writer = tf.summary.create_file_writer(self.summary_dir)
        with writer.as_default():
            for name, value in values.items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    tf.summary.scalar(f"{prefix}/{name}", value, step=step)
        writer.close()

    def log_evaluation(self, generation, metrics, split="test"):
        """Writes a model's evaluation as `split/metric`, stepped by generation.

        Args:
            generation: The model's generation (0 for the teacher).
            metrics: A dict of metric names to values, e.g. the result of
                `evaluate(..., return_dict=True)`.
            split: The data split the metrics were measured on.
        """
        self.log_scalars(int(generation), metrics, split)

    def log_hparams(self, hparams, metrics=None, trial_id=None):
        """Records a configuration with TensorBoard's HParams plugin.

        Args:
            hparams: A dict of names to values; values that are not bool,
                int, float or str are recorded as strings.
            metrics: Optional tags of summary scalars (e.g. `"test/accuracy"`)
                that the HParams dashboard shows beside the configuration.
            trial_id: Optional name of the trial.
        """
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        values = {str(k): _hparam_value(v) for k, v in hparams.items()}
        writer = tf.summary.create_file_writer(self.summary_dir)
        with writer.as_default():
            if metrics:
                hp.hparams_config(
                    hparams=[hp.HParam(name) for name in values],
                    metrics=[hp.Metric(tag) for tag in metrics],
                )
            hp.hparams(values, trial_id=trial_id)
        writer.close()
