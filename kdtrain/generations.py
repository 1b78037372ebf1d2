"""Born-Again Networks: chains of generations that teach each other.

`GenerationRunner` trains a teacher (or takes a trained one), then a fresh
student of the same architecture on the teacher's outputs, then lets that
student teach the next generation, and finally averages the generations in a
`GenerationEnsemble` (Furlanello et al. 2018). With a `directory`, every
finished generation is saved as it ends and an interrupted chain resumes
where it stopped.
"""

import contextlib
import copy
import os
import re
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

from kdtrain import losses as losses_module
from callbacks.progress import TqdmProgress
from callbacks.tensorboard import GenerationTensorBoard
from kdtrain import cache as cache_module
from kdtrain.cache import TeacherOutputCache
from kdtrain.cache import weights_fingerprint
from kdtrain.chain_callbacks import DivergenceGuard
from kdtrain.chain_callbacks import EpochRecord
from kdtrain.chain_callbacks import copy_callbacks
from kdtrain.chain_callbacks import float_logs
from kdtrain.chain_config import architecture_fingerprint
from kdtrain.chain_config import describe_callbacks
from kdtrain.chain_config import describe_differences
from kdtrain.chain_config import normalize
from kdtrain.chain_config import strip_names
from kdtrain.chain_errors import ConfigurationMismatch
from kdtrain.chain_errors import TrainingDiverged
from kdtrain.chain_errors import WorkerFailure
from kdtrain.distiller import Distiller
from kdtrain.distribute import is_multi_worker
from kdtrain.distribute import support_multi_worker
from kdtrain.distiller import validate_ground_truth_weight
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.outputs import crossentropy
from kdtrain.outputs import label_format
from kdtrain.outputs import resolve_output_kind
from kdtrain.outputs import validate_output_kind
from kdtrain.results import ENSEMBLE_NAMES
from kdtrain.results import GenerationResult
from kdtrain.results import model_label
from kdtrain.results import model_name
from kdtrain.runfiles import read_json
from kdtrain.runfiles import save_model_atomically
from kdtrain.runfiles import write_json_atomically
from kdtrain.splits import DataSplit

# Re-exported: these names lived in this module before it was split.
from kdtrain.results import default_split  # noqa: F401
from kdtrain.results import markdown_table  # noqa: F401
from kdtrain.results import table_splits  # noqa: F401

RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
_FORMAT = 1
_TEACH_FROM = ("previous", "teacher")
_RESERVED_FIT_ARGUMENTS = (
    "x", "y", "epochs", "initial_epoch", "callbacks", "validation_data",
    "batch_size", "sample_weight",
)


# What TensorFlow raises when a collective loses a peer.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)
_CACHE_CHOICES = ("auto", True, False)


# Models ----------------------------------------------------------------------


def _fresh_metrics(metrics, binary_logits=False):
    """New metric objects (a metric instance holds state)."""
    fresh = []
    for metric in metrics or ():
        if binary_logits and metric in ("accuracy", "acc"):
            metric = keras.metrics.BinaryAccuracy(
                threshold=0.0, name="accuracy"
            )
        elif isinstance(metric, keras.metrics.Metric):
            metric = type(metric).from_config(metric.get_config())
        fresh.append(metric)
    return fresh


def _output_shape(model, x):
    return tuple(int(d) for d in model(x, training=False).shape[1:])


# Distribution --------------------------------------------------------------


def worker_directory(directory, strategy=None):
    """Where this process writes a chain: non-chief workers get their own.

    Args:
        directory: The chain's directory, or None.
        strategy: The `tf.distribute.Strategy` of the run, or None.

    Returns:
        `directory` for a single process or the chief of a multi-worker run,
        else `directory/worker-K` (K: the task index).
    """
    if directory is None:
        return None
    directory = os.fspath(directory)
    if not is_multi_worker(strategy) or strategy.extended.should_checkpoint:
        return directory
    return os.path.join(
        directory, f"worker-{strategy.cluster_resolver.task_id}"
    )


# The runner --------------------------------------------------------------------


class GenerationRunner:
    """Trains Born-Again generations: each one a fresh model taught by the last.

    Generation 0 is the teacher: the model passed as `teacher`, or one
    built by `build_model` and trained on the labels (crossentropy) for
    `teacher_epochs`. Generation K (1..N) is a fresh `build_model()` trained
    by a `kdtrain.Distiller` on generation K-1's outputs
    (`teach_from="previous"`), or on the teacher's
    (`teach_from="teacher"`). Each generation gets a fresh optimizer and
    fresh copies of the callbacks. At the end every model, the ensemble of
    the students and the ensemble with the teacher are evaluated on the
    validation and test data.

    With a `directory`, the chain survives crashes: each finished
    generation is saved as `gen-K/model.keras` (atomically), the results in
    `results.json`, and the running generation is backed up at each epoch's
    end (`keras.callbacks.BackupAndRestore`). Running the same runner on the
    same directory again loads the finished generations and resumes the
    interrupted one. A directory made by a different configuration is
    refused (`ConfigurationMismatch`, saying what differs) unless
    `overwrite=True`, which clears it.

    Args:
        build_model: A function returning a fresh, uncompiled `keras.Model`
            each time it is called.
        generations: The number N of student generations, at least 1.
        teacher: A trained `keras.Model` (any architecture with the
            students' output shape), or None to train generation 0 on the
            labels.
        distillation_loss: A `kdtrain.losses.DistillationLoss` or a name in
            `kdtrain.losses.ALIASES` (`"soft_targets"`, `"kl"`, `"cwtm"`,
            `"dkpp"`...).
        ground_truth_weight: The weight of the label loss, in [0, 1].
        optimizer: An optimizer name, a serialized optimizer config, an
            optimizer (its configuration is copied), or a function returning
            a fresh optimizer. Every generation gets its own.
        metrics: Metrics of the models against the labels.
        directory: Where checkpoints, logs and `results.json` go; None
            writes nothing.
        teach_from: `"previous"` (each generation teaches the next) or
            `"teacher"` (all learn from generation 0).
        seed: Optional integer; generation K is built and trained after
            `keras.utils.set_random_seed(seed + K)`.
        overwrite: Whether a directory of another configuration is cleared
            instead of refused. A directory of the same configuration is
            always resumed.
        tensorboard: Whether to log to `directory/logs` with a
            `callbacks.GenerationTensorBoard` (the
            `callbacks` package); `"auto"` does when
            there is a directory. A `GenerationTensorBoard` is used as is.
        progress: Whether to show `callbacks.TqdmProgress` bars
            instead of Keras' progress output; `"auto"` does when there is a
            directory. A `TqdmProgress` is used as is.
        verbose: `fit`'s verbosity when there are no tqdm bars; also prints
            a line per generation when not 0.
        teacher_outputs: `"auto"`, `"logits"` or `"probabilities"`: what a
            passed teacher emits.
        student_outputs: The same for the models of `build_model`.
        build_teacher: Optional function returning a fresh model of another
            architecture to train as generation 0 (on the labels) instead of
            a `build_model()` model: one teacher distilled into students of
            a different architecture.
        cache_teacher: Whether each student trains from its teacher's
            outputs computed once (`kdtrain.cache.TeacherOutputCache`,
            float16, joined to the samples by index) instead of running the
            teacher on every batch. `"auto"` caches when the training data
            cannot change between epochs: arrays, or a `tf.data.Dataset`
            without random ops (`kdtrain.cache.is_randomized`). `True`
            forces it and refuses augmented data: the teacher must see the
            student's augmented batch. A dataset is read once into memory
            to fix the order of its samples. With a `directory` the outputs
            are also saved in `gen-K/` until the generation ends (memory
            mapped when large), so a resumed generation reuses them.
        strategy: Optional `tf.distribute.Strategy`. Every model is built,
            trained and evaluated inside its `scope()`; a given `teacher`
            is only read and may come from outside. Under a multi-worker
            strategy, only the chief writes `directory`; the other workers
            write their copies into `directory/worker-K`.
        feature_losses: `kdtrain.losses.FeatureLoss` instances (attention
            transfer, hints) between layers of the same names in every
            generation, passed to each generation's `Distiller`; each
            generation gets fresh hint adapters.

    Example:

    ```python
    def build_model():
        return keras.Sequential([keras.Input((64,)),
                                 keras.layers.Dense(32, activation="relu"),
                                 keras.layers.Dense(10)])

    runner = kdtrain.GenerationRunner(build_model, generations=3,
                                      directory="ban-digits", seed=0)
    result = runner.run((x_train, y_train), test_data=(x_test, y_test),
                        epochs=20, batch_size=64)
    print(result.to_markdown())
    ```
    """

    def __init__(
        self,
        build_model,
        generations=3,
        teacher=None,
        distillation_loss="soft_targets",
        ground_truth_weight=0.0,
        optimizer="adam",
        metrics=("accuracy",),
        directory=None,
        teach_from="previous",
        seed=None,
        overwrite=False,
        tensorboard="auto",
        progress="auto",
        verbose=1,
        teacher_outputs="auto",
        student_outputs="auto",
        build_teacher=None,
        cache_teacher="auto",
        strategy=None,
        feature_losses=(),
    ):
        if not callable(build_model) or isinstance(build_model, keras.Model):
            raise ValueError(
                "`build_model` must be a function returning a fresh, "
                "uncompiled keras.Model (a model object would be shared by "
                f"every generation). Received: build_model={build_model!r}"
            )
        if (
            isinstance(generations, bool)
            or not isinstance(generations, (int, np.integer))
            or generations < 1
        ):
            raise ValueError(
                "`generations` must be an integer >= 1: the number of "
                f"student generations. Received: generations={generations!r}"
            )
        if teacher is not None:
            if not isinstance(teacher, keras.Model):
                raise ValueError(
                    "`teacher` must be a trained keras.Model or None. "
                    f"Received: teacher={teacher!r}"
                )
            if not teacher.built:
                raise ValueError(
                    f"The teacher {teacher.name!r} is not built, so it has no "
                    "trained weights. Train it (or load a trained model), or "
                    "pass teacher=None to train generation 0 on the labels."
                )
        if build_teacher is not None and (
            teacher is not None
            or not callable(build_teacher)
            or isinstance(build_teacher, keras.Model)
        ):
            raise ValueError(
                "`build_teacher` must be a function returning a fresh, "
                "uncompiled keras.Model, and goes without `teacher`. "
                f"Received: build_teacher={build_teacher!r}, "
                f"teacher={teacher!r}"
            )
        if teach_from not in _TEACH_FROM:
            raise ValueError(
                f"`teach_from` must be one of {_TEACH_FROM}. "
                f"Received: teach_from={teach_from!r}"
            )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
        ):
            raise ValueError(f"`seed` must be an integer or None. Received: {seed!r}")
        if not any(cache_teacher is c for c in _CACHE_CHOICES) and (
            cache_teacher != "auto"
        ):
            raise ValueError(
                "`cache_teacher` must be 'auto', True or False. "
                f"Received: cache_teacher={cache_teacher!r}"
            )
        if strategy is not None and not isinstance(
            strategy, tf.distribute.Strategy
        ):
            raise ValueError(
                "`strategy` must be a tf.distribute.Strategy or None. "
                f"Received: strategy={strategy!r}"
            )
        for value in (tensorboard, progress):
            if value not in ("auto", True, False) and not isinstance(
                value, (GenerationTensorBoard, TqdmProgress)
            ):
                raise ValueError(
                    "`tensorboard` and `progress` take 'auto', True, False or "
                    f"a callback instance. Received: {value!r}"
                )
        self.build_model = build_model
        self.build_teacher = build_teacher
        self.generations = int(generations)
        self.teacher = teacher
        self.distillation_loss = (
            None if distillation_loss is None
            else losses_module.get(distillation_loss)
        )
        self.ground_truth_weight = validate_ground_truth_weight(
            ground_truth_weight
        )
        self.optimizer = optimizer
        self._make_optimizer()  # Fails early on a bad optimizer.
        self.metrics = list(metrics or ())
        self.strategy = strategy
        self.cache_teacher = cache_teacher
        self.feature_losses = list(feature_losses or ())
        for loss in self.feature_losses:
            if not isinstance(loss, losses_module.FeatureLoss):
                raise ValueError(
                    "`feature_losses` takes kdtrain.losses.FeatureLoss "
                    f"instances. Received: {loss!r}"
                )
        self.directory = worker_directory(directory, strategy)
        self.teach_from = teach_from
        self.seed = None if seed is None else int(seed)
        self.overwrite = bool(overwrite)
        self.tensorboard = tensorboard
        self.progress = progress
        self.verbose = verbose
        self.teacher_outputs = validate_output_kind(
            teacher_outputs, "teacher_outputs"
        )
        self.student_outputs = validate_output_kind(
            student_outputs, "student_outputs"
        )
        self._built_models = []
        self._caches = {}

    # Pieces -----------------------------------------------------------------

    def _make_optimizer(self):
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.Optimizer):
            return type(optimizer).from_config(optimizer.get_config())
        if isinstance(optimizer, (str, dict)):
            return keras.optimizers.get(copy.deepcopy(optimizer))
        if callable(optimizer):
            made = optimizer()
            if not isinstance(made, keras.optimizers.Optimizer):
                raise ValueError(
                    "The `optimizer` function must return a keras optimizer. "
                    f"It returned {made!r}."
                )
            return made
        raise ValueError(
            "`optimizer` must be a name, a serialized optimizer, an "
            "optimizer or a function returning one. "
            f"Received: optimizer={optimizer!r}"
        )

    def _builder(self, generation):
        if generation == 0 and self.build_teacher is not None:
            return self.build_teacher
        return self.build_model

    def _fresh_model(self, generation, sample_x):
        """A new model from `build_model`, built and checked."""
        model = self._builder(generation)()
        where = (
            f"for generation {generation}" if generation is not None
            else "on its first call"
        )
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`build_model` must return a keras.Model; {where} it "
                f"returned {model!r}."
            )
        for previous in [self.teacher, *self._built_models]:
            if previous is None:
                continue
            if model is previous:
                raise ValueError(
                    f"`build_model` returned the model {model.name!r} twice "
                    f"({where}): two generations would share one model, so "
                    "training the student would change its teacher. Build a "
                    "new model on every call."
                )
        if not model.built:
            model(sample_x, training=False)
        known = {
            id(v)
            for previous in [self.teacher, *self._built_models]
            if previous is not None
            for v in previous.weights
        }
        shared = [v.path for v in model.weights if id(v) in known]
        if shared:
            raise ValueError(
                f"The model `build_model` returned {where} shares weights "
                f"with an earlier generation or the teacher: "
                f"{', '.join(shared[:5])}. Build every model from new layers."
            )
        self._built_models.append(model)
        return model

    def _output_kind(self, generation):
        if generation == 0 and self.teacher is not None:
            return resolve_output_kind(
                self.teacher, self.teacher_outputs, "teacher_outputs"
            )
        model = self._models[generation]
        return resolve_output_kind(model, self.student_outputs, "student_outputs")

    def teacher_source(self, generation, models):
        """The model whose outputs teach `generation` (K >= 1).

        The one place that decides where a generation's targets come from.

        Args:
            generation: The student generation, 1..N.
            models: The models so far, `[teacher, gen-1, ...]`.

        Returns:
            A `keras.Model`.
        """
        if self.teach_from == "teacher":
            return models[0]
        return models[generation - 1]

    def _compile_for_labels(self, model, kind, optimizer=None):
        support_multi_worker(model)
        model.compile(
            optimizer=optimizer or self._make_optimizer(),
            loss=crossentropy(self._label_format, kind == "logits"),
            metrics=_fresh_metrics(
                self.metrics,
                binary_logits=self._label_format == "binary"
                and kind == "logits",
            ),
        )

    def _tensorboard_callback(self):
        if isinstance(self.tensorboard, GenerationTensorBoard):
            return self.tensorboard
        on = self.tensorboard
        if on == "auto":
            on = self.directory is not None
        if not on:
            return None
        if self.directory is None:
            raise ValueError(
                "tensorboard=True needs a `directory` to write logs in."
            )
        return GenerationTensorBoard(os.path.join(self.directory, LOGS_DIR))

    def _progress_callback(self):
        if isinstance(self.progress, TqdmProgress):
            return self.progress
        on = self.progress
        if on == "auto":
            on = self.directory is not None
        return TqdmProgress() if on else None

    def _say(self, message):
        if self.verbose and self._progress is None:
            print(message, file=sys.stdout, flush=True)

    def _path(self, *parts):
        return os.path.join(self.directory, *parts)

    # Configuration and directory -------------------------------------------

    def _configuration(self, splits, epochs, teacher_epochs, fit_kwargs,
                       architecture, callbacks=None):
        optimizer = self._make_optimizer()
        config = {
            "callbacks": describe_callbacks(callbacks),
            "metrics": [
                metric if isinstance(metric, str)
                else getattr(metric, "name", type(metric).__name__)
                for metric in self.metrics
            ],
            "format": _FORMAT,
            "generations": self.generations,
            "teach_from": self.teach_from,
            # Names are numbered per process ("adam_3"): left out.
            "feature_losses": [
                keras.saving.serialize_keras_object(loss)
                for loss in self.feature_losses
            ],
            "distillation_loss": strip_names(
                keras.saving.serialize_keras_object(self.distillation_loss)
            ),
            "ground_truth_weight": self.ground_truth_weight,
            "optimizer": strip_names(
                keras.saving.serialize_keras_object(optimizer)
            ),
            "epochs": int(epochs),
            "teacher_epochs": None if self.teacher is not None else int(
                teacher_epochs or epochs
            ),
            "seed": self.seed,
            "model": architecture,
            "teacher": None,
            "data": {name: data.describe() for name, data in splits.items()},
            "fit": {key: fit_kwargs[key] for key in sorted(fit_kwargs)},
            "outputs": {
                "teacher": self.teacher_outputs,
                "student": self.student_outputs,
            },
        }
        if self.teacher is not None:
            config["teacher"] = {
                **architecture_fingerprint(self.teacher),
                "weights_sha256": weights_fingerprint(self.teacher),
            }
        return normalize(config)

    def _prepare_directory(self, config):
        """Checks the directory against `config`; returns the saved results."""
        os.makedirs(self.directory, exist_ok=True)
        results_path = self._path(RESULTS_FILE)
        ours = [
            name for name in os.listdir(self.directory)
            if re.fullmatch(r"gen-\d+", name) or name == LOGS_DIR
        ]
        if os.path.exists(results_path):
            saved = read_json(results_path)
            if saved.get("config") == config:
                return saved
            problem = (
                f"The directory {self.directory!r} holds a chain made by a "
                "different configuration:\n"
                + "\n".join(
                    describe_differences(saved.get("config") or {}, config)
                )
            )
        elif ours:
            problem = (
                f"The directory {self.directory!r} holds {', '.join(ours)} "
                f"but no {RESULTS_FILE}, so it is not a chain this runner "
                "can resume."
            )
        else:
            return None
        if not self.overwrite:
            raise ConfigurationMismatch(
                problem + "\nNothing was changed. Use another directory, or "
                "pass overwrite=True to clear it and start afresh."
            )
        for name in ours:
            shutil.rmtree(self._path(name))
        if os.path.exists(results_path):
            os.remove(results_path)
        return None

    def _write_results(self, complete=False, table=None):
        if self.directory is None:
            return
        value = {
            "config": self._config,
            "complete": complete,
            "generations": self._records,
        }
        if table is not None:
            value["table"] = table
        write_json_atomically(self._path(RESULTS_FILE), value)

    # Evaluation ---------------------------------------------------------------

    def _evaluate(self, model, kind=None):
        """Metrics of `model`'s probabilities on each evaluation split."""
        if not self._evaluation_splits:
            return {}
        if not isinstance(model, GenerationEnsemble):
            model = GenerationEnsemble([model], outputs=[kind], name="single")
        support_multi_worker(model)
        model.compile(
            loss=crossentropy(self._label_format, from_logits=False),
            metrics=_fresh_metrics(self.metrics),
        )
        results = {}
        for split, data in self._evaluation_splits.items():
            values = model.evaluate(
                **data.fit_arguments(), verbose=0, return_dict=True
            )
            results[split] = float_logs(values)
        return results

    def _log_evaluation(self, generation, evaluation):
        if self._board is None:
            return
        for split, values in evaluation.items():
            self._board.log_evaluation(generation, values, split)

    # Training -----------------------------------------------------------------

    def _fit(self, generation, trainer, train, validation, epochs, callbacks,
             fit_kwargs):
        name = model_name(generation)
        directory = self._path(f"gen-{generation}") if self.directory else None
        record = EpochRecord(
            os.path.join(directory, HISTORY_FILE) if directory else None
        )
        # The guard comes first: a loss that turns NaN at an epoch's end
        # stops training before the backup saves the diverged weights.
        internal = [DivergenceGuard(generation, self.directory)]
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            internal.append(
                keras.callbacks.BackupAndRestore(
                    os.path.join(directory, BACKUP_DIR),
                    delete_checkpoint=False,
                )
            )
        internal.append(record)
        monitors = []
        if self._board is not None:
            self._board.set_generation(generation)
            monitors.append(self._board)
        if self._progress is not None:
            self._progress.set_generation(model_label(generation))
            monitors.append(self._progress)
        arguments = dict(fit_kwargs)
        if train.kind != "arrays":
            # Datasets shuffle themselves; Keras warns when told to.
            arguments.setdefault("shuffle", False)
        if self._progress is not None:
            arguments["verbose"] = 0
        else:
            arguments.setdefault("verbose", self.verbose)
        if validation is not None:
            arguments["validation_data"] = validation.validation_argument()
            if validation.kind == "arrays" and validation.batch_size:
                arguments.setdefault(
                    "validation_batch_size", validation.batch_size
                )
        self._say(f"Training {model_label(generation)} ({name})")
        try:
            trainer.fit(
                **train.fit_arguments(),
                epochs=epochs,
                callbacks=internal + monitors + callbacks,
                **arguments,
            )
        except BaseException as error:
            for monitor in monitors:
                try:
                    monitor.on_train_end({})
                except Exception:  # noqa: BLE001 - cleanup only
                    pass
            failure = error
            if isinstance(error, _PEER_ERRORS) and is_multi_worker(
                self.strategy or tf.distribute.get_strategy()
            ):
                failure = self._worker_failure(generation, error)
            if isinstance(failure, (TrainingDiverged, WorkerFailure)):
                self._records[name] = {
                    "status": "diverged"
                    if isinstance(failure, TrainingDiverged) else "failed",
                    "message": str(failure),
                }
                self._write_results()
            if failure is not error:
                raise failure from error
            raise
        history = keras.callbacks.History()
        history.history = record.history()
        history.epoch = [entry["epoch"] for entry in record.entries]
        return history, record.elapsed()

    def _worker_failure(self, generation, error):
        lines = [
            line.strip() for line in str(error).splitlines()
            if line.strip() and not line.strip().endswith(":")
            and not line.strip().startswith(("File ", "Detected at", "[["))
        ]
        detail = lines[-1][:300] if lines else "no detail"
        saved = (
            f" Finished generations are saved in {self.directory!r} "
            "(gen-K/model.keras); starting every worker again resumes "
            f"{model_name(generation)} from its last finished epoch."
            if self.directory else ""
        )
        return WorkerFailure(
            f"Generation {generation} ({model_label(generation)}) stopped: "
            "multi-worker training lost contact with another worker "
            f"({type(error).__name__}: {detail}).{saved}",
            generation=generation,
            directory=self.directory,
        )

    # The teacher-output cache --------------------------------------------------

    def _cache_plan(self, train, fit_kwargs):
        """Whether students train from cached teacher outputs (None: no)."""
        if self.cache_teacher is False:
            return None
        if self.feature_losses:
            if self.cache_teacher is True:
                raise ValueError(
                    "cache_teacher=True, but feature losses compare the "
                    "teacher's intermediate outputs, which only an online "
                    "teacher gives. Pass cache_teacher='auto' or False."
                )
            return None
        augmented = train.augmented()
        if self.cache_teacher == "auto":
            if augmented is not False:
                return None
        elif augmented:
            raise ValueError(
                "cache_teacher=True, but the training data are randomly "
                "augmented (the tf.data pipeline draws random numbers), so "
                "each epoch shows the models different images. The teacher "
                "must see the same augmented batch as the student (Beyer et "
                "al. 2021), so its outputs cannot be computed once. Pass "
                "cache_teacher='auto' or False, or data without augmentation."
            )
        elif augmented is None:
            raise ValueError(
                "cache_teacher=True needs `train_data` as (x, y) arrays or a "
                "tf.data.Dataset, whose samples can be indexed; received a "
                f"{type(train.data).__name__}."
            )
        return {"data": train, "shuffle": train.shuffled(fit_kwargs),
                "arrays": None}

    def _cached_train_data(self, generation, teacher):
        """The training split joined to `teacher`'s cached outputs."""
        plan = self._cached_train
        if plan["arrays"] is None:
            plan["arrays"] = plan["data"].arrays()
        x, y, sample_weight, batch_size = plan["arrays"]
        cache = self._teacher_cache(generation, teacher, x)
        dataset = cache.dataset(
            x, y, sample_weight, batch_size=batch_size,
            shuffle=plan["shuffle"],
        )
        return DataSplit(dataset, None, "train_data")

    def _teacher_cache(self, generation, teacher, x):
        fingerprint = weights_fingerprint(teacher)
        cache = self._caches.get(fingerprint)
        directory = (
            self._path(f"gen-{generation}") if self.directory else None
        )
        samples = cache_module.num_samples(x)
        if cache is None and directory and TeacherOutputCache.exists(
            directory
        ):
            cache = TeacherOutputCache.load(
                directory, teacher=teacher, samples=samples
            )
        if cache is None:
            self._say(f"Caching the outputs of {teacher.name}")
            cache = TeacherOutputCache.compute(
                teacher, x, teacher_outputs=self._teacher_kind(generation)
            )
        if directory and not TeacherOutputCache.exists(directory):
            cache.save(directory)
            if cache.nbytes > cache_module.MEMORY_MAP_BYTES:
                cache = TeacherOutputCache.load(directory, memory_map=True)
        self._caches = {fingerprint: cache}
        return cache

    # Training -------------------------------------------------------------------

    def _train_generation(self, generation, train, validation, epochs,
                          callbacks, fit_kwargs, sample_x):
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed + generation)
        model = self._fresh_model(generation, sample_x)
        self._models.append(model)
        kind = self._output_kind(generation)
        optimizer = self._make_optimizer()
        user_callbacks = copy_callbacks(callbacks, generation)
        if generation == 0:
            self._compile_for_labels(model, kind, optimizer)
            trainer = model
            teacher, was_trainable = None, None
        else:
            teacher = self.teacher_source(generation, self._models)
            was_trainable = teacher.trainable
            trainer = Distiller(
                model,
                teacher,
                teacher_outputs=self._teacher_kind(generation),
                student_outputs=kind,
                strategy=self.strategy,
            )
            if self._cached_train is not None:
                train = self._cached_train_data(generation, teacher)
            trainer.compile(
                optimizer=optimizer,
                distillation_loss=self.distillation_loss,
                feature_losses=self.feature_losses,
                ground_truth_weight=self.ground_truth_weight,
                metrics=_fresh_metrics(self.metrics),
            )
        try:
            history, elapsed = self._fit(
                generation, trainer, train, validation, epochs,
                user_callbacks, fit_kwargs,
            )
        finally:
            if teacher is not None:
                teacher.trainable = was_trainable
        return model, history, elapsed

    def _teacher_kind(self, generation):
        source = self.teacher_source(generation, self._models)
        index = next(
            k for k, model in enumerate(self._models) if model is source
        )
        return self._output_kind(index)

    def _load_generation(self, generation, sample_x):
        path = self._path(f"gen-{generation}", MODEL_FILE)
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001
            # Safe mode refuses e.g. Lambda layers: rebuild and load weights.
            try:
                model = self._builder(generation)()
                if not model.built:
                    model(sample_x, training=False)
                model.load_weights(path)
            except Exception:  # noqa: BLE001
                raise ValueError(
                    f"Cannot load the finished generation {path!r}: {error}"
                ) from error
        self._built_models.append(model)
        return model

    # The chain ------------------------------------------------------------------

    def run(
        self,
        train_data,
        validation_data=None,
        test_data=None,
        epochs=1,
        teacher_epochs=None,
        callbacks=None,
        batch_size=None,
        evaluate=True,
        **fit_kwargs,
    ):
        """Trains (or resumes) the chain and evaluates every model.

        Args:
            train_data: A `tf.data.Dataset`, a `keras.utils.PyDataset` or an
                `(x, y)` tuple of arrays. Labels are needed to train the
                teacher, with `ground_truth_weight > 0`, or for a loss that
                reads them (`"cwtm"`).
            validation_data: Optional data of the same kinds, with labels:
                `fit`'s validation data, and a split of the table.
            test_data: Optional labeled data: a split of the table.
            epochs: Epochs per student generation.
            teacher_epochs: Epochs of the teacher (generation 0) when it is
                trained here. Defaults to `epochs`.
            callbacks: Keras callbacks, copied afresh for every generation,
                or a function of the generation returning a list.
            batch_size: Batch size for array data.
            evaluate: Whether to evaluate the models and ensembles on the
                validation and test data (on the training data when there
                are neither) for the table. False leaves the table empty.
            **fit_kwargs: Other `fit` arguments for every generation
                (`steps_per_epoch`, `shuffle`, `class_weight`...).

        Returns:
            A `GenerationResult`.

        Raises:
            ValueError: On bad input, before anything is trained.
            ConfigurationMismatch: When `directory` holds another chain.
            TrainingDiverged: When a generation's loss becomes NaN.
            WorkerFailure: When a multi-worker run loses a worker.
        """
        scope = self.strategy.scope() if self.strategy else (
            contextlib.nullcontext()
        )
        with scope:
            return self._run(
                train_data, validation_data, test_data, epochs,
                teacher_epochs, callbacks, batch_size, evaluate, **fit_kwargs
            )

    def _run(self, train_data, validation_data, test_data, epochs,
             teacher_epochs, callbacks, batch_size, evaluate, **fit_kwargs):
        """`run`, inside the strategy's scope."""
        for key in _RESERVED_FIT_ARGUMENTS:
            if key in fit_kwargs:
                raise ValueError(
                    f"`{key}` is not a fit argument of run(); see its "
                    "arguments (train_data, validation_data, epochs, "
                    "callbacks, batch_size)."
                )
        for name, value in (("epochs", epochs), ("teacher_epochs", teacher_epochs)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer))
                or value < 1
            ):
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {value!r}")
        train = DataSplit(train_data, batch_size, "train_data")
        splits = {"train": train}
        if validation_data is not None:
            splits["validation"] = DataSplit(
                validation_data, batch_size, "validation_data"
            )
        if test_data is not None:
            splits["test"] = DataSplit(test_data, batch_size, "test_data")
        self._check_labels(splits)
        self._cached_train = self._cache_plan(train, fit_kwargs)
        sample_x, sample_y = train.first_batch()

        # A throwaway model checks build_model and fingerprints it.
        self._built_models = []
        self._models = []
        probe = self._fresh_model(None, sample_x)
        shape = _output_shape(probe, sample_x)
        teacher_probe = self.teacher
        if self.build_teacher is not None:
            teacher_probe = self.build_teacher()
            if not isinstance(teacher_probe, keras.Model):
                raise ValueError(
                    "`build_teacher` must return a keras.Model; it returned "
                    f"{teacher_probe!r}."
                )
        if teacher_probe is not None:
            teacher_shape = _output_shape(teacher_probe, sample_x)
            if teacher_shape != shape:
                raise ValueError(
                    "The models of `build_model` must have the teacher's "
                    f"output shape. Received: teacher output shape "
                    f"{teacher_shape}, build_model() output shape {shape}."
                )
        classes = shape[-1] if shape else 1
        label_source = sample_y
        if label_source is None:
            for data in splits.values():
                if data.has_labels:
                    label_source = data.first_batch()[1]
                    break
        self._label_format = (
            "sparse" if label_source is None
            else label_format(label_source.shape, classes)
        )
        self._config = self._configuration(
            splits, epochs, teacher_epochs, fit_kwargs,
            architecture_fingerprint(probe), callbacks,
        )
        if self.build_teacher is not None:
            self._config["teacher"] = normalize(
                {"build": architecture_fingerprint(teacher_probe)}
            )
        evaluation_splits = {
            k: v for k, v in splits.items() if k in ("validation", "test")
        }
        self._evaluation_splits = evaluation_splits or {"train": train}
        if not evaluate:
            self._evaluation_splits = {}

        saved = None
        if self.directory is not None:
            saved = self._prepare_directory(self._config)
        self._records = dict((saved or {}).get("generations") or {})
        self._write_results()

        self._board = self._tensorboard_callback()
        self._progress = self._progress_callback()
        first = 0 if self.teacher is None else 1
        if self._progress is not None:
            done = sum(
                1 for k in range(first, self.generations + 1)
                if self._finished(k)
            )
            self._progress.begin_generations(
                self.generations + 1 - first, initial=done
            )
        validation = splits.get("validation")
        histories = {}
        evaluations = {}
        try:
            if self.teacher is not None:
                self._models.append(self.teacher)
                histories["teacher"] = None
            for generation in range(first, self.generations + 1):
                name = model_name(generation)
                if self._finished(generation):
                    model = self._load_generation(generation, sample_x)
                    self._models.append(model)
                    record = self._records[name]
                    history = keras.callbacks.History()
                    history.history = record.get("history", {})
                    histories[name] = history
                    self._say(f"Loaded {model_label(generation)} ({name})")
                    continue
                gen_epochs = epochs if generation else (teacher_epochs or epochs)
                model, history, elapsed = self._train_generation(
                    generation, train, validation, gen_epochs, callbacks,
                    fit_kwargs, sample_x,
                )
                histories[name] = history
                evaluation = self._evaluate(model, self._output_kind(generation))
                evaluations[name] = evaluation
                self._log_evaluation(generation, evaluation)
                record = {
                    "status": "done",
                    "path": f"gen-{generation}/{MODEL_FILE}",
                    "history": history.history,
                    "epochs": len(history.epoch),
                    "wall_time": elapsed,
                    "params": int(model.count_params()),
                    "evaluation": evaluation,
                }
                if self.directory is not None:
                    save_model_atomically(
                        model, self._path(f"gen-{generation}", MODEL_FILE)
                    )
                self._records[name] = record
                self._write_results()
                if self.directory is not None:
                    shutil.rmtree(
                        self._path(f"gen-{generation}", BACKUP_DIR),
                        ignore_errors=True,
                    )
                    TeacherOutputCache.delete(
                        self._path(f"gen-{generation}")
                    )
                if self._progress is not None:
                    self._progress.end_generation(
                        history.history and {
                            k: v[-1] for k, v in history.history.items()
                        }
                    )
            return self._finish(histories, evaluations)
        finally:
            if self._progress is not None:
                self._progress.end_generations()

    def _finished(self, generation):
        if self.directory is None:
            return False
        record = self._records.get(model_name(generation)) or {}
        return record.get("status") == "done" and os.path.exists(
            self._path(f"gen-{generation}", MODEL_FILE)
        )

    def _check_labels(self, splits):
        train = splits["train"]
        reasons = []
        if self.teacher is None:
            reasons.append("generation 0 (the teacher) is trained on them")
        if self.ground_truth_weight > 0:
            reasons.append(
                f"ground_truth_weight is {self.ground_truth_weight}"
            )
        if self.distillation_loss is not None and (
            self.distillation_loss.uses_labels
        ):
            reasons.append(
                f"the loss {type(self.distillation_loss).__name__} reads them"
            )
        if reasons and not train.has_labels:
            raise ValueError(
                "`train_data` carries no labels, but "
                + " and ".join(reasons)
                + ". Pass (x, y) data, or a trained `teacher` with "
                "ground_truth_weight=0 and a loss without labels."
            )
        for name in ("validation", "test"):
            if name in splits and not splits[name].has_labels:
                raise ValueError(
                    f"`{name}_data` must carry labels: the models are "
                    "evaluated on it."
                )

    def _finish(self, histories, evaluations):
        models = self._models
        table = []
        for generation, model in enumerate(models):
            name = model_name(generation)
            record = self._records.get(name) or {}
            evaluation = evaluations.get(name) or record.get("evaluation")
            wanted = set(self._evaluation_splits)
            if not evaluation or set(evaluation) != wanted or any(
                not self._has_metrics(values) for values in evaluation.values()
            ):
                evaluation = self._evaluate(model, self._output_kind(generation))
                if generation > 0 or self.teacher is None:
                    record["evaluation"] = evaluation
            if generation == 0 and self.teacher is not None:
                self._log_evaluation(0, evaluation)
            for split in self._evaluation_splits:
                values = evaluation[split]
                table.append({
                    "name": name,
                    "label": model_label(generation),
                    "split": split,
                    **values,
                    "params": int(model.count_params()),
                    "wall_time": record.get("wall_time"),
                })
        for generation, model in enumerate(models):
            if generation > 0 or self.teacher is None:
                self._compile_for_labels(model, self._output_kind(generation))
        kinds = [self._output_kind(k) for k in range(len(models))]
        ensemble = GenerationEnsemble(
            models[1:], outputs=kinds[1:], name="ensemble"
        )
        with_teacher = GenerationEnsemble(
            models, outputs=kinds, name="ensemble_with_teacher"
        )
        for name, ensemble_model, members in (
            ("ensemble", ensemble, range(1, len(models))),
            ("ensemble_with_teacher", with_teacher, range(len(models))),
        ):
            evaluation = self._evaluate(ensemble_model)
            times = [
                (self._records.get(model_name(k)) or {}).get("wall_time")
                for k in members
            ]
            times = [t for t in times if t is not None]
            for split, values in evaluation.items():
                table.append({
                    "name": name,
                    "label": ENSEMBLE_NAMES[name],
                    "split": split,
                    **values,
                    "params": int(
                        sum(models[k].count_params() for k in members)
                    ),
                    "wall_time": sum(times) if times else None,
                })
                if self._board is not None:
                    self._board.log_scalars(
                        self.generations, values, f"{split}/{name}"
                    )
        if self._board is not None:
            self._board.log_hparams(
                self._hparams(),
                metrics=[
                    f"{split}/{metric}"
                    for split in self._evaluation_splits
                    for metric in ("accuracy", "loss")
                ],
                trial_id=os.path.basename(os.path.abspath(self.directory))
                if self.directory else None,
            )
        self._write_results(complete=True, table=table)
        return GenerationResult(
            models, ensemble, with_teacher, table, histories,
            directory=self.directory, config=self._config,
        )

    def _has_metrics(self, values):
        names = {"loss"}
        for metric in self.metrics:
            if isinstance(metric, str):
                names.add("accuracy" if metric in ("acc", "accuracy") else metric)
            elif hasattr(metric, "name"):
                names.add(metric.name)
        return names <= set(values)

    def _hparams(self):
        loss = self.distillation_loss
        optimizer = self._make_optimizer()
        learning_rate = optimizer.get_config().get("learning_rate")
        train = self._config["data"]["train"]
        return {
            "generations": self.generations,
            "distillation_loss": "none" if loss is None else type(loss).__name__,
            "feature_losses": ",".join(
                loss.name for loss in self.feature_losses
            ) or "none",
            "temperature": getattr(loss, "temperature", 1.0),
            "ground_truth_weight": self.ground_truth_weight,
            "teach_from": self.teach_from,
            "teacher": "trained" if self.teacher is None else "given",
            "epochs": self._config["epochs"],
            "teacher_epochs": self._config["teacher_epochs"] or 0,
            "optimizer": type(optimizer).__name__,
            "learning_rate": learning_rate
            if isinstance(learning_rate, (int, float)) else str(learning_rate),
            "seed": -1 if self.seed is None else self.seed,
            "batch_size": train.get("batch_size") or 0,
        }
