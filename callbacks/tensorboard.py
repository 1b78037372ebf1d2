"""`GenerationTensorBoard`: one TensorBoard run per generation, plus a summary."""

import contextlib
import math
import os
import re
import time

import keras
import numpy as np

from kdtrain import files

from .generation import GenerationCallback
from .generation import generation_name
from .names import is_distilled_ensemble

# The summary run's one event file. The number grows with each rewrite so
# that TensorBoard's directory watcher, which reads files in name order,
# moves on to the new one.
_SUMMARY_FILE = "events.out.tfevents.{:010d}.kdtrain-summary.v2"
_SUMMARY_NUMBER = re.compile(r"^events\.out\.tfevents\.(\d+)\.kdtrain-summary")


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _without_times(value):
    """A summary value without the creation times the HParams data carry.

    Logging the same configuration twice then counts as the same content.
    """
    from tensorboard.plugins.hparams import plugin_data_pb2

    if value.metadata.plugin_data.plugin_name != "hparams":
        return value
    data = plugin_data_pb2.HParamsPluginData.FromString(
        value.metadata.plugin_data.content
    )
    kind = data.WhichOneof("data")
    if kind == "experiment":
        data.experiment.time_created_secs = 0.0
    elif kind == "session_start_info":
        data.session_start_info.start_time_secs = 0.0
    copy = type(value)()
    copy.CopyFrom(value)
    # Deterministic: the order of a map's entries may differ by process.
    copy.metadata.plugin_data.content = data.SerializeToString(
        deterministic=True
    )
    return copy


def _read_summary_values(paths):
    """`{(tag, step): (wall_time, summary value)}` of event files, in order.

    A later file's value of the same tag and step replaces an earlier one.
    """
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2

    values = {}
    for path in paths:
        for record in event_file_loader.RawEventFileLoader(path).Load():
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                values[(value.tag, int(event.step))] = (event.wall_time, value)
    return values


def _event_file_bytes(values):
    """The bytes of an event file holding `values` (see `_read_summary_values`).

    It starts with a session start at step 0: TensorBoard then discards
    what it read from the file this one replaces instead of doubling it.
    """
    import io

    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    start = min((wall_time for wall_time, _ in values.values()), default=0.0)
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(
        wall_time=start, file_version="brain.Event:2"
    ).SerializeToString())
    writer.write(event_pb2.Event(
        wall_time=start, step=0,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
    ).SerializeToString())
    # In step order, whatever order the folded files came in.
    for (_, step), (wall_time, value) in sorted(
        values.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        writer.write(event_pb2.Event(
            wall_time=wall_time, step=step,
            summary=summary_pb2.Summary(value=[value]),
        ).SerializeToString())
    return buffer.getvalue()


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

    The summary run is a single event file with the latest value of each
    tag and generation, rewritten whole when a value changes: a resumed or
    repeated run updates it instead of adding event files, and one that
    logs nothing new leaves it untouched.

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
        # Also after a rerun that trained nothing: unchanged, nothing is
        # written, and a run that stopped before this point gets its record.
        if logs.get("completed"):
            self.log_hparams(logs.get("hparams") or {}, logs.get("metrics"),
                             logs.get("trial_id"))

    # Generation bookkeeping -------------------------------------------------

    def set_generation(self, generation):
        """Sets the generation the next `fit` logs as (`gen-K`; a
        `DistilledEnsembleIndex` logs as `gen-ensemble`)."""
        self.generation = generation if is_distilled_ensemble(
            generation
        ) else int(generation)

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
        from tensorboard.plugins.scalar import summary_v2

        summaries = []
        for name, value in values.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                summaries.append(summary_v2.scalar_pb(f"{prefix}/{name}",
                                                      value))
        self._update_summary(int(step), summaries)

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
        from tensorboard.plugins.hparams import api as hp
        from tensorboard.plugins.hparams import summary_v2

        values = {str(k): _hparam_value(v) for k, v in hparams.items()}
        summaries = []
        if metrics:
            summaries.append(summary_v2.hparams_config_pb(
                hparams=[hp.HParam(name) for name in values],
                metrics=[hp.Metric(tag) for tag in metrics],
            ))
        summaries.append(summary_v2.hparams_pb(values, trial_id=trial_id))
        self._update_summary(0, summaries)

    def _summary_files(self):
        """The event files of the summary run, in TensorBoard's order."""
        if not os.path.isdir(self.summary_dir):
            return []
        return sorted(
            os.path.join(self.summary_dir, name)
            for name in os.listdir(self.summary_dir)
            if "tfevents" in name and not files.is_temporary(name)
        )

    def _update_summary(self, step, summaries):
        """Merges `Summary` protos at `step` into the summary run's file.

        The summary run is one event file holding the latest value of each
        tag and step, rewritten whole (and atomically) when a value changes:
        values logged again unchanged (a rerun, a resumed chain) leave it as
        it is, and no run piles up event files. The files it replaces,
        earlier kdtrain versions' included, are folded in.
        """
        old_paths = self._summary_files()
        values = _read_summary_values(old_paths)
        changed = len(old_paths) > 1 or any(
            not _SUMMARY_NUMBER.match(os.path.basename(p)) for p in old_paths
        )
        now = time.time()
        for summary in summaries:
            for value in summary.value:
                key = (value.tag, step)
                if key in values and (
                    _without_times(values[key][1]) == _without_times(value)
                ):
                    continue
                values[key] = (now, value)
                changed = True
        if not changed:
            return
        os.makedirs(self.summary_dir, exist_ok=True)
        numbers = [int(_SUMMARY_NUMBER.match(os.path.basename(p)).group(1))
                   for p in old_paths
                   if _SUMMARY_NUMBER.match(os.path.basename(p))]
        number = max([int(now), *(n + 1 for n in numbers)])
        path = os.path.join(self.summary_dir, _SUMMARY_FILE.format(number))
        # A temporary name without "tfevents", which TensorBoard would read.
        temporary = files.temporary_path(
            os.path.join(self.summary_dir, "summary")
        )
        try:
            with open(temporary, "wb") as file:
                file.write(_event_file_bytes(values))
            files.fsync_path(temporary)
            os.replace(temporary, path)
            files.fsync_path(self.summary_dir)
        finally:
            files.remove(temporary)
        for old in old_paths:
            if old != path:
                # A file TensorBoard holds open on Windows goes next time.
                with contextlib.suppress(OSError):
                    os.remove(old)
        for name in os.listdir(self.summary_dir):
            if files.is_temporary(name):  # Left by a killed writer.
                files.remove(os.path.join(self.summary_dir, name))
