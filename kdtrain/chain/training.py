"""Training one generation of a chain: its model, targets, callbacks and fit."""

import warnings

import keras
import numpy as np
import tensorflow as tf

from kdtrain import faults
from kdtrain.cache import CacheMismatch
from kdtrain.cache import MEMORY_MAP_BYTES
from kdtrain.cache import NonFiniteTeacherOutputs
from kdtrain.cache import TeacherOutputCache
from kdtrain.cache import check_finite_outputs
from kdtrain.cache import teacher_logits
from kdtrain.cache import weights_fingerprint
from kdtrain.chain.backup import GenerationBackup
from kdtrain.chain.backup import stateful
from kdtrain.chain.callbacks import DivergenceGuard
from kdtrain.chain.config import architecture_fingerprint
from kdtrain.chain.callbacks import EpochRecord
from kdtrain.chain.callbacks import EpochSeed
from kdtrain.chain.callbacks import FaultPoints
from kdtrain.chain.callbacks import copy_callbacks
from kdtrain.chain.callbacks import finished_generations_message
from kdtrain.chain.directory import generation_dir_name
from kdtrain.chain.errors import ChainWarning
from kdtrain.chain.errors import TrainingDiverged
from kdtrain.chain.errors import WorkerFailure
from kdtrain.chain.generation import EnsembleTeacher
from kdtrain.chain.generation import Generation
from kdtrain.tracing import set_random_seed
from kdtrain.chain.models import compile_for_labels
from kdtrain.chain.models import fresh_metrics
from kdtrain.chain.results import describe_model
from kdtrain.chain.results import model_label
from kdtrain.chain.results import model_name
from kdtrain.callbacks.names import is_distilled_ensemble
from kdtrain.distiller import Distiller
from kdtrain.distribute import is_multi_worker
from kdtrain.faults import fault_point
from kdtrain.outputs import resolve_output_kind
from kdtrain.pipelines import array_dataset
from kdtrain.tracing import build_training_state
from kdtrain.tracing import symbolic_batch
from kdtrain.outputs import to_logits

# What TensorFlow raises when a collective loses a peer.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)


def _variable_specs(model):
    return [(tuple(v.shape), v.dtype) for v in model.variables]


# The last teacher outputs this process computed or loaded: the chains of a
# sweep's points learn from one teacher on the same data, which then runs
# over them once (`kdtrain.sweep`).
_RECENT = []


def _recent_cache(fingerprint, kind, keys):
    """The last cache, if it holds this teacher's outputs on these samples."""
    for recent_kind, cache in _RECENT:
        if (recent_kind == kind and cache.fingerprint == fingerprint
                and keys is not None and cache.keys is not None
                and np.array_equal(cache.keys, keys)):
            return cache
    return None


class GenerationTrainer:
    """Trains the generations of one run of a chain.

    Args:
        runner: The `GenerationRunner` (its settings).
        plan: The run's `ChainPlan`.
        factory: The run's `ModelFactory`.
        directory: The `ChainDirectory`, or None.
        epoch_seed: The int64 variable the runner's pipelines read.
        monitors: The runner's TensorBoard and progress callbacks.
        evaluation: The run's `ChainEvaluation`.
    """

    def __init__(self, runner, plan, factory, directory, epoch_seed,
                 monitors, evaluation):
        self.runner = runner
        self.plan = plan
        self.factory = factory
        self.directory = directory
        self.epoch_seed = epoch_seed
        self.monitors = [m for m in monitors if m is not None]
        self.evaluation = evaluation
        self._reusable = None
        self._initial_optimizer = []

    @property
    def arrays(self):
        """The training split as `TrainingArrays`, read once by the plan."""
        return self.plan.training_arrays

    # One generation ----------------------------------------------------------

    def load(self, index, record):
        """A finished generation, loaded from the directory and checked."""
        fault_point(f"{generation_dir_name(index)}/model.load")
        model = self.factory.adopt(self.directory.load_model(index, record))
        self.directory.remove_scratch(index)  # left by a crash after the record
        kind = record.get("output_kind") or resolve_output_kind(
            model, self.runner.student_outputs, "student_outputs"
        )
        self.runner.say(f"Loaded {model_label(index)} ({model_name(index)})")
        return Generation.from_record(index, model, kind, record)

    def train(self, index, generations):
        """Trains generation `index` (resuming its backup), saves it.

        Args:
            index: The generation, or a `DistilledEnsembleIndex` for the
                student distilled from the ensemble of generations 1..N.
            generations: The `Generation`s before it.

        Returns:
            The new `Generation`, committed to the directory.
        """
        runner, plan = self.runner, self.plan
        if runner.seed is not None:
            set_random_seed(runner.seed + index)  # keeps traced steps
        model = self.factory.fresh(index, plan.sample_x)
        kind = resolve_output_kind(model, runner.student_outputs,
                                   "student_outputs")
        source = self._source(index, generations)
        frozen = []
        if source is None:
            compile_for_labels(model, kind, plan.label_format,
                               runner.make_optimizer(),
                               runner.metrics)
            trainer, (data, own) = model, self._data(None, index)
        elif isinstance(source, EnsembleTeacher):
            # Read before the Distiller freezes the members.
            frozen = [(m, m.trainable) for m in source.models]
            # Its own Distiller: a reused one's student is generation N.
            self._reusable = None
            trainer = self._new_distiller(model, kind, source)
            source.model = trainer.teacher  # the members' GenerationEnsemble
            data, own = self._data(source, index)
        else:
            # The teacher's outputs first: they may come from the model
            # that a reused Distiller trains next.
            data, own = self._data(source, index)
            trainer = self._reused_distiller(model, kind, source,
                                             generations)
            # Read before the Distiller freezes the teacher.
            frozen = [(source, source.model.trainable)]
            if trainer is None:
                trainer = self._new_distiller(model, kind, source)
            else:
                trainer.replace_teacher(source.model, source.output_kind)
            model = trainer.student
        try:
            record = self._fit(index, trainer, data, own, source)
        finally:
            for teacher, was_trainable in frozen:  # The Distiller froze them.
                if isinstance(teacher, Generation):
                    teacher = teacher.model  # replaced by a reused Distiller
                teacher.trainable = was_trainable
        self._keep_for_reuse(trainer, kind)
        generation = Generation(index, model, kind, record)
        record["evaluation"] = self.evaluation.model(generation)
        record["taught_by"] = None if source is None else source.lineage
        record["output_kind"] = kind
        record["params"] = int(model.count_params())
        if self.directory is not None:
            generation.record = self.directory.commit_generation(
                index, model, record
            )
        return Generation.from_record(index, model, kind, generation.record)

    def _source(self, index, generations):
        """What teaches `index`: None (the labels), a `Generation`, or the
        `EnsembleTeacher` of the students."""
        if is_distilled_ensemble(index):
            return EnsembleTeacher([g for g in generations if g.index >= 1])
        if index == 0:
            return None
        return generations[self.runner.teacher_index(index)]

    # Distillers ---------------------------------------------------------------

    def _new_distiller(self, model, kind, source):
        runner = self.runner
        if isinstance(source, EnsembleTeacher):
            # The list of members: the Distiller averages their
            # probabilities in a GenerationEnsemble.
            teacher = source.models
            outputs = [member.output_kind for member in source.members]
        else:
            teacher, outputs = source.model, source.output_kind
        trainer = Distiller(model, teacher, teacher_outputs=outputs,
                            student_outputs=kind, strategy=runner.strategy)
        trainer.compile(
            optimizer=runner.make_optimizer(),
            distillation_loss=runner.distillation_loss,
            feature_losses=runner.feature_losses,
            ground_truth_weight=runner.ground_truth_weight,
            metrics=fresh_metrics(runner.metrics),
        )
        return trainer

    def _keep_for_reuse(self, trainer, kind):
        """Keeps a Distiller trained from cached outputs for the next
        generation, with its optimizer's values before training."""
        self._reusable = None
        if isinstance(trainer, Distiller) and self.plan.cache and (
            self.runner.strategy is None and not tf.distribute.has_strategy()
        ):
            self._reusable = (trainer, kind, self._initial_optimizer)

    def _reused_distiller(self, fresh, kind, source, generations):
        """The previous generation's Distiller, ready for the next student.

        Tracing a training step costs about as much as a few epochs of a
        small model. When the teacher's outputs come from the cache, the
        traced step does not involve the teacher, so the next student of
        the same architecture trains in the same Keras objects: the trained
        weights move to `fresh`, which takes that generation's place, the
        student takes `fresh`'s initial values and the optimizer its
        values from before training. The numbers are those of a new
        Distiller; nothing is traced again.

        Returns:
            The Distiller (its teacher still to be replaced), or None where
            a new one is needed.
        """
        reusable, self._reusable = self._reusable, None
        if reusable is None or not self.plan.cache:
            return None
        trainer, previous_kind, optimizer_values = reusable
        student = trainer.student
        if previous_kind != kind or _variable_specs(student) != (
            _variable_specs(fresh)
        ) or architecture_fingerprint(student) != architecture_fingerprint(
            fresh
        ):
            return None
        initial = [keras.ops.convert_to_numpy(v) for v in fresh.variables]
        for target, source_variable in zip(fresh.variables,
                                           student.variables):
            target.assign(source_variable)
        for target, value in zip(student.variables, initial):
            target.assign(value)
        for generation in generations:
            if generation.model is student:
                generation.model = fresh
        for variable, value in optimizer_values:
            variable.assign(value)
        return trainer

    # Data --------------------------------------------------------------------

    def _data(self, source, index):
        """`fit`'s data arguments for generation `index`, and whether they
        are the runner's own pipeline (ordered by the epoch seed)."""
        plan, runner = self.plan, self.runner
        if source is not None and plan.cache:
            arrays = self.arrays
            cache = self._teacher_cache(source, index)
            dataset = cache.dataset(arrays.x, arrays.y, arrays.sample_weight,
                                    arrays.batch_size, plan.shuffle,
                                    epoch_seed=self.epoch_seed)
            return {"x": dataset}, True
        if runner.deterministic or plan.augmentation is not None:
            arrays = self.arrays
            return {"x": array_dataset(
                arrays.x, arrays.y, arrays.sample_weight, arrays.batch_size,
                plan.shuffle, epoch_seed=self.epoch_seed,
                augmentation=plan.augmentation,
            )}, True
        if source is not None:
            self._check_teacher(source, plan.sample_x)
        return plan.train.fit_arguments(), False

    def _teacher_cache(self, source, index):
        """The teacher's outputs on the training arrays: reused, or computed."""
        teacher, arrays = source.model, self.arrays
        fingerprint = weights_fingerprint(teacher)
        folder = self.directory.cache_dir(index) if self.directory else None
        name = generation_dir_name(index)
        cache = None
        if folder and TeacherOutputCache.exists(folder):
            cache = self._load_cache(folder, source)
        if cache is None:
            cache = _recent_cache(fingerprint, source.output_kind,
                                  arrays.keys)
            if cache is not None and folder:
                cache.save(folder, fault=f"{name}/cache.write")
        if cache is None:
            self.runner.say(f"Caching the outputs of {source.label}")
            cache = TeacherOutputCache.compute(
                teacher, arrays.x, teacher_outputs=source.output_kind,
                keys=arrays.keys, name=f"{source.name} ({source.label})",
                fault=f"{name}/cache.compute",
            )
            if folder:
                cache.save(folder, fault=f"{name}/cache.write")
                if cache.nbytes > MEMORY_MAP_BYTES:
                    cache = TeacherOutputCache.load(folder, memory_map=True)
        _RECENT[:] = [(source.output_kind, cache)]
        return cache

    def _load_cache(self, folder, source):
        """A saved cache, checked; None (with a warning) when it is wrong."""
        arrays = self.arrays
        try:
            cache = TeacherOutputCache.load(folder, teacher=source.model,
                                            keys=arrays.keys)
            cache.verify(source.model, arrays.x, source.output_kind,
                         source=f"The cache in {folder}")
            return cache
        except CacheMismatch as error:
            warnings.warn(f"{error} Computing it again.", ChainWarning,
                          stacklevel=2)
            TeacherOutputCache.delete(folder)
            return None

    def _find_non_finite_outputs(self, source):
        """Runs the teacher over the training inputs, batch by batch."""
        start = 0
        for index, batch in enumerate(self.plan.train.input_batches()):
            outputs = source.model(batch, training=False)
            logits = keras.ops.convert_to_numpy(
                to_logits(outputs, source.output_kind)
            )
            check_finite_outputs(logits, start, index,
                                 f"{source.name} ({source.label})")
            start += len(logits)

    @staticmethod
    def _check_teacher(source, sample_x):
        """Refuses an online teacher whose first outputs are not finite."""
        teacher_logits(source.model, sample_x, teacher_outputs=(
            source.output_kind), name=f"{source.name} ({source.label})")

    # Fitting -----------------------------------------------------------------

    def _callbacks(self, index, trainer, record, own_pipeline):
        """The chain's callbacks around the user's copies (backup last)."""
        runner, name = self.runner, generation_dir_name(index)
        path = self.directory.path if self.directory else None
        internal = [DivergenceGuard(index, path)]
        if own_pipeline:  # always so in deterministic mode
            random_objects = []
            if runner.deterministic:
                random_objects = [
                    obj for obj in (trainer, runner.distillation_loss)
                    if obj is not None
                ]
            internal.append(EpochSeed(self.epoch_seed, runner.base_seed,
                                      index, random_objects))
        internal.append(record)
        if faults.enabled():
            internal.append(FaultPoints(name))
        user = copy_callbacks(self.plan.callbacks, index)
        tail = []
        if self.directory is not None:
            tail.append(GenerationBackup(
                self.directory.backup_dir(index),
                stateful_objects=[record, *stateful(user)],
                label=describe_model(index),
                fault_prefix=name,
                frozen=[trainer.teacher] if isinstance(trainer, Distiller)
                else [],
            ))
        return internal + self.monitors + user + tail

    def _fit_arguments(self, data, own_pipeline):
        plan, runner = self.plan, self.runner
        arguments = dict(plan.fit_kwargs)
        if own_pipeline:
            arguments["shuffle"] = False  # Ordered by the epoch seed.
        elif "y" not in data:
            # Datasets shuffle themselves.
            arguments.setdefault("shuffle", False)
        if runner.has_progress:
            arguments["verbose"] = 0
        else:
            arguments.setdefault("verbose", runner.verbose)
        validation = plan.validation
        if validation is not None:
            arguments["validation_data"] = validation.data
            if validation.kind == "arrays" and validation.batch_size:
                arguments.setdefault("validation_batch_size",
                                     validation.batch_size)
        return arguments

    def _fit(self, index, trainer, data, own_pipeline, source):
        plan = self.plan
        record = EpochRecord()
        arguments = self._fit_arguments(data, own_pipeline)
        epochs = plan.epochs if index else (plan.teacher_epochs or plan.epochs)
        callbacks = self._callbacks(index, trainer, record, own_pipeline)
        self.runner.say(f"Training {model_label(index)} ({model_name(index)})")
        batch = symbolic_batch(data["x"], data.get("y"),
                               data.get("sample_weight"))
        if batch is not None:
            build_training_state(trainer, batch)
        self._initial_optimizer = [
            (v, keras.ops.convert_to_numpy(v))
            for v in trainer.optimizer.variables
        ] if trainer.optimizer is not None and trainer.optimizer.built else []
        try:
            trainer.fit(**data, epochs=epochs, callbacks=callbacks, **arguments)
        except BaseException as error:
            self._stop_monitors()
            failure = self._explain(index, error, source)
            if failure is error:
                raise
            raise failure from error
        return {
            "history": record.history(),
            "epochs": len(record.entries),
            "wall_time": record.elapsed(),
        }

    def _stop_monitors(self):
        for monitor in self.monitors:
            try:
                monitor.on_train_end({})
            except Exception:  # noqa: BLE001 - cleanup only
                pass

    def _explain(self, index, error, source):
        """The error to raise for a failed `fit`: clearer where possible."""
        strategy = self.runner.strategy or tf.distribute.get_strategy()
        if isinstance(error, _PEER_ERRORS) and is_multi_worker(strategy):
            return self._worker_failure(index, error)
        if isinstance(error, TrainingDiverged) and source is not None and (
            not self.plan.cache
        ):
            # An online teacher with NaN outputs makes the loss NaN: name it.
            try:
                self._find_non_finite_outputs(source)
            except NonFiniteTeacherOutputs as found:
                return found
        return error

    def _worker_failure(self, index, error):
        lines = [
            line.strip() for line in str(error).splitlines()
            if line.strip() and not line.strip().endswith(":")
            and not line.strip().startswith(("File ", "Detected at", "[["))
        ]
        detail = lines[-1][:300] if lines else "no detail"
        path = self.directory.path if self.directory else None
        saved = (
            f" {finished_generations_message(path)} Starting every worker "
            f"again resumes {model_name(index)} from its last finished epoch."
            if path else ""
        )
        return WorkerFailure(
            f"{describe_model(index, capital=True)} stopped: "
            "multi-worker training lost contact with another worker "
            f"({type(error).__name__}: {detail}).{saved}",
            generation=index,
            directory=path,
        )
