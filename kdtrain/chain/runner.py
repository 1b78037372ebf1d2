"""Born-Again Networks: chains of generations that teach each other.

`GenerationRunner` trains a teacher (or takes a trained one), then a fresh
student of the same architecture on the teacher's outputs, then lets that
student teach the next generation, and finally averages the generations in a
`GenerationEnsemble` (Furlanello et al. 2018). With a `directory`, every
finished generation is saved as it ends and an interrupted chain resumes
where it stopped.
"""

import contextlib
import inspect
import random
import sys

import tensorflow as tf

from kdtrain import __version__
from kdtrain import losses as losses_module
from kdtrain import validation
from kdtrain.chain.callbacks import ChainEvents
from kdtrain.chain.callbacks import check_monitor
from kdtrain.chain.callbacks import is_chain_callback
from kdtrain.chain.callbacks import monitors
from kdtrain.chain.config import summary
from kdtrain.chain.directory import ChainDirectory
from kdtrain.chain.directory import worker_directory
from kdtrain.chain.evaluation import ChainEvaluation
from kdtrain.chain.generation import Generation
from kdtrain.chain.models import ModelFactory
from kdtrain.chain.models import compile_for_labels
from kdtrain.chain.models import make_optimizer
from kdtrain.chain.plan import make_plan
from kdtrain.chain.results import GenerationResult
from kdtrain.chain.results import distilled_ensemble_index
from kdtrain.chain.results import model_label
from kdtrain.chain.results import model_name
from kdtrain.chain.results import table_splits
from kdtrain.chain.training import GenerationTrainer
from kdtrain.outputs import resolve_output_kind
from kdtrain.outputs import validate_output_kind

_TEACH_FROM = ("previous", "teacher")
_SWITCH = ("auto", True, False)


class GenerationRunner:
    """Trains Born-Again generations: each one a fresh model taught by the last.

    Generation 0 is the teacher: the model passed as `teacher`, or one
    built by `build_model` and trained on the labels (crossentropy) for
    `teacher_epochs`. Generation K (1..N) is a fresh `build_model()` trained
    by a `kdtrain.Distiller` on generation K-1's outputs
    (`teach_from="previous"`), or on the teacher's
    (`teach_from="teacher"`). Each generation gets a fresh optimizer and
    fresh copies of the callbacks. With `distill_ensemble=True` one more
    fresh `build_model()` student is then distilled, like a generation,
    from the ensemble of generations 1..N: the ensemble's accuracy at the
    cost of one model. At the end every model, the ensemble of the
    students and the ensemble with the teacher are evaluated on the
    validation and test data.

    With a `directory`, the chain survives crashes (`kdtrain.chain.
    ChainDirectory` owns its files): every setting is checked and the
    models are built before anything is written; one process at a time
    holds the directory (a second gets `DirectoryLocked`, naming the
    holder's PID); each finished generation is saved as
    `gen-K/model.keras` with its SHA-256 and its teacher in
    `gen-K/record.json`; the running generation is backed up at each
    epoch's end, never over the last good backup. Running the same chain on
    the same directory again verifies and loads the finished generations
    and resumes the interrupted one. A directory made by another
    configuration is refused (`ConfigurationMismatch`, saying what
    differs) unless `overwrite=True`, which removes only the files kdtrain
    wrote there.

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
            seeding with `seed + K` as `keras.utils.set_random_seed` does
            (`kdtrain.tracing.set_random_seed`, which keeps TensorFlow's
            compiled functions).
        overwrite: Whether a directory of another configuration is cleared
            (of kdtrain's own files only) instead of refused. A directory
            of the same configuration is always resumed.
        tensorboard: Whether to log to `directory/logs` with a
            `callbacks.GenerationTensorBoard`; `"auto"` does when there is a
            directory. A `GenerationTensorBoard` is used as is.
        progress: Whether to show `callbacks.TqdmProgress` bars instead of
            Keras' progress output; `"auto"` does when there is a
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
            float16) instead of running the teacher on every batch.
            `"auto"` caches when the training data cannot change between
            epochs: arrays, or a `tf.data.Dataset` without random ops
            (`kdtrain.cache.is_randomized`). `True` forces it and refuses
            augmented data: the teacher must see the student's augmented
            batch. A dataset is read once into memory, its samples sorted
            by content so their order never depends on the pipeline's
            shuffling. With a `directory` the outputs are saved in
            `gen-K/cache/` until the generation ends, keyed by sample;
            a resumed generation reuses them only after checking the keys
            and recomputing random rows with the teacher. Students of one
            architecture trained from the cache also share one
            `Distiller`, whose traced step serves them all: a callback's
            `self.model` is then the same object in those generations
            (`result.models` holds a distinct model per generation).
        strategy: Optional `tf.distribute.Strategy`. Every model is built,
            trained and evaluated inside its `scope()`; a given `teacher`
            is only read and may come from outside. Under a multi-worker
            strategy, only the chief writes `directory`; the other workers
            write their copies into `directory/worker-K`.
        feature_losses: `kdtrain.losses.FeatureLoss` instances (attention
            transfer, hints) between layers of the same names in every
            generation, passed to each generation's `Distiller`; each
            generation gets fresh hint adapters.
        deterministic: Whether a run killed at any point and resumed gives
            exactly the uninterrupted run's results (on CPU): TensorFlow's
            op determinism is switched on for the process, and each epoch's
            sample order, dropout and DKPP draws come from (seed,
            generation, epoch). Needs a `seed` and training data that can
            be read once (arrays or a dataset without random ops).
        retrain_from: Optional generation K: discard generations K..N of
            the directory (and its results) and train them again. Needed
            when a finished generation's model is missing or changed. The
            student distilled from the ensemble is discarded with them;
            `retrain_from=N + 1` discards only that student.
        settings: Optional dict of JSON values that identify the run beyond
            what the runner sees (the command line passes how it made the
            data); recorded and compared on resume like the rest.
        distill_ensemble: Whether the chain ends with one more fresh
            `build_model()` student, distilled from the ensemble of the
            student generations 1..N (the mean of their probabilities: the
            table's `"ensemble"`, without the teacher) with the same loss,
            `ground_truth_weight`, optimizer, epochs and callbacks as a
            generation (a callbacks function receives N + 1). It is saved
            in `gen-ensemble/` like a generation (resumed, cached, logged)
            and has its own column, `"gen-ensemble"` (label
            `"Ensemble-distilled"`), and `GenerationResult.
            distilled_ensemble`. Needs `generations >= 2`, and no
            `feature_losses` (an ensemble has no layers to match).

    Attributes:
        cache_used: After `run`, whether the students trained from cached
            teacher outputs.

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
        deterministic=False,
        retrain_from=None,
        settings=None,
        distill_ensemble=False,
    ):
        # For `run_seeds`: the same runner with another seed and directory.
        arguments = locals()
        self._arguments = {
            name: arguments[name] for name in
            inspect.signature(GenerationRunner).parameters
        }
        self._set_models(build_model, generations, teacher, build_teacher,
                         teacher_outputs, student_outputs)
        self._set_training(distillation_loss, ground_truth_weight, optimizer,
                           metrics, teach_from, feature_losses,
                           cache_teacher, strategy)
        self._set_distill_ensemble(distill_ensemble)
        self._set_run(directory, seed, deterministic, overwrite,
                      retrain_from, settings, tensorboard, progress, verbose)

    def _set_models(self, build_model, generations, teacher, build_teacher,
                    teacher_outputs, student_outputs):
        self.build_model = validation.model_builder("build_model", build_model)
        self.generations = validation.integer("generations", generations, 1)
        self.teacher = validation.trained_model("teacher", teacher)
        self.build_teacher = validation.model_builder(
            "build_teacher", build_teacher, required=False
        )
        if self.build_teacher is not None and teacher is not None:
            raise ValueError(
                "`build_teacher` trains generation 0 and goes without "
                f"`teacher`. Received: build_teacher={build_teacher!r}, "
                f"teacher={teacher!r}"
            )
        self.teacher_outputs = validate_output_kind(
            teacher_outputs, "teacher_outputs"
        )
        self.student_outputs = validate_output_kind(
            student_outputs, "student_outputs"
        )

    def _set_training(self, distillation_loss, ground_truth_weight,
                      optimizer, metrics, teach_from, feature_losses,
                      cache_teacher, strategy):
        self.distillation_loss = (
            None if distillation_loss is None
            else losses_module.get(distillation_loss)
        )
        self.ground_truth_weight = validation.ground_truth_weight(
            ground_truth_weight
        )
        self.optimizer = optimizer
        make_optimizer(optimizer)  # Fails early on a bad optimizer.
        self.metrics = list(metrics or ())
        self.teach_from = validation.choice("teach_from", teach_from,
                                            _TEACH_FROM)
        self.feature_losses = list(feature_losses or ())
        for loss in self.feature_losses:
            if not isinstance(loss, losses_module.FeatureLoss):
                raise ValueError(
                    "`feature_losses` takes kdtrain.losses.FeatureLoss "
                    f"instances. Received: {loss!r}"
                )
        self.cache_teacher = validation.choice("cache_teacher", cache_teacher,
                                               _SWITCH)
        if strategy is not None and not isinstance(
            strategy, tf.distribute.Strategy
        ):
            raise ValueError(
                "`strategy` must be a tf.distribute.Strategy or None. "
                f"Received: strategy={strategy!r}"
            )
        self.strategy = strategy

    def _set_distill_ensemble(self, distill_ensemble):
        self.distill_ensemble = validation.boolean("distill_ensemble",
                                                   distill_ensemble)
        if not self.distill_ensemble:
            return
        if self.generations < 2:
            raise ValueError(
                "distill_ensemble=True distills the ensemble of generations "
                "1..N into one more student, but with generations=1 that "
                "ensemble is generation 1 alone, and its student would be "
                "one more Born-Again generation. Pass generations=2 or more. "
                f"Received: generations={self.generations}, "
                "distill_ensemble=True"
            )
        if self.feature_losses:
            raise ValueError(
                "distill_ensemble=True teaches with the ensemble's averaged "
                "probabilities, which has no intermediate layers for "
                "`feature_losses` to match. Pass one or the other."
            )

    def _set_run(self, directory, seed, deterministic, overwrite,
                 retrain_from, settings, tensorboard, progress, verbose):
        self.directory = worker_directory(directory, self.strategy)
        self.seed = validation.integer("seed", seed, allow_none=True)
        self.deterministic = bool(deterministic)
        if self.deterministic and self.seed is None:
            raise ValueError(
                "deterministic=True derives every random draw from the seed: "
                "pass `seed` too."
            )
        first = 0 if self.teacher is None else 1
        last = self.generations + (1 if self.distill_ensemble else 0)
        self.retrain_from = validation.integer(
            "retrain_from", retrain_from, first, allow_none=True
        )
        if self.retrain_from is not None and (
            self.retrain_from > last or self.directory is None
        ):
            ensemble = (f" ({last}: the student distilled from the ensemble)"
                        if self.distill_ensemble else "")
            raise ValueError(
                "`retrain_from` names a generation of the directory to train "
                f"again, {first}..{last}{ensemble}, and needs a `directory`."
                f" Received: retrain_from={retrain_from!r}"
            )
        self.overwrite = bool(overwrite)
        self.settings = settings
        self.tensorboard = check_monitor("tensorboard", tensorboard,
                                         self.directory)
        self.progress = check_monitor("progress", progress, self.directory)
        self.verbose = verbose
        self.base_seed = self.seed if self.seed is not None else (
            random.SystemRandom().randrange(2**31)
        )
        self.cache_used = None

    # Pieces -----------------------------------------------------------------

    def teacher_index(self, generation):
        """The generation whose outputs teach `generation` (K >= 1)."""
        return 0 if self.teach_from == "teacher" else generation - 1

    def teacher_source(self, generation, models):
        """The model whose outputs teach `generation` (K >= 1).

        Args:
            generation: The student generation, 1..N.
            models: The models so far, `[teacher, gen-1, ...]`.

        Returns:
            A `keras.Model`.
        """
        return models[self.teacher_index(generation)]

    def make_optimizer(self):
        """A fresh optimizer for one generation."""
        return make_optimizer(self.optimizer)

    @property
    def has_progress(self):
        """Whether tqdm bars replace Keras' progress output."""
        return self._monitors[1] is not None

    def say(self, message):
        """Prints a line about the chain's progress (without tqdm bars)."""
        if self.verbose and not self.has_progress:
            print(message, file=sys.stdout, flush=True)

    @property
    def _monitors(self):
        """The TensorBoard and progress callbacks, or None for each."""
        if getattr(self, "_monitor_pair", None) is None:
            self._monitor_pair = monitors(self.tensorboard, self.progress,
                                          self.directory)
        return self._monitor_pair

    # The chain ---------------------------------------------------------------

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
        augmentation=None,
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
                or a function of the generation returning a list. A
                `callbacks.GenerationCallback` is shared by all generations
                and also receives the chain's events.
            batch_size: Batch size for array data.
            evaluate: Whether to evaluate the models and ensembles on the
                validation and test data (on the training data when there
                are neither) for the table. False leaves the table empty.
            augmentation: Optional Keras random image layers (a layer or a
                `keras.Sequential`, e.g. `kdtrain.data.augmentation("cifar")`)
                that the runner applies to the training batches, read once
                from `train_data` (which must not augment itself). Each
                batch's draws come from (seed, generation, epoch, batch), so
                this is how a deterministic run augments. The teacher then
                runs on the student's augmented batch.
            **fit_kwargs: Other `fit` arguments for every generation
                (`steps_per_epoch`, `shuffle`, `class_weight`...).

        Returns:
            A `GenerationResult`.

        Raises:
            ValueError: On bad input, before anything is trained or written.
            RunDirectoryError: When `directory` cannot be used as it is
                (`ConfigurationMismatch`, `DirectoryLocked`, changed or
                missing models), before anything is written.
            TrainingDiverged: When a generation's loss becomes NaN.
            WorkerFailure: When a multi-worker run loses a worker.
        """
        # Created outside the strategy's scope: the pipelines read it.
        epoch_seed = tf.Variable([0, 0], dtype=tf.int64, trainable=False)
        scope = self.strategy.scope() if self.strategy else (
            contextlib.nullcontext()
        )
        with scope:
            factory = ModelFactory(self.build_model, self.build_teacher,
                                   self.teacher)
            plan = make_plan(
                self, factory, train_data, validation_data, test_data,
                epochs, teacher_epochs, callbacks, batch_size, evaluate,
                fit_kwargs, augmentation,
            )
            self.cache_used = plan.cache
            if self.deterministic:  # For the whole process, once planned.
                tf.config.experimental.enable_op_determinism()
            directory = ChainDirectory.for_run(self.directory, self.strategy)
            if directory is not None:
                directory.lock.check()
                directory.refuse_foreign()
            with directory.lock if directory else contextlib.nullcontext():
                finished = {}
                if directory is not None:
                    directory.claim(plan.config, self.generations,
                                    overwrite=self.overwrite,
                                    distilled_ensemble=self.distill_ensemble)
                    finished = directory.finished_records(
                        plan.first, self.generations, self.retrain_from,
                        lenient=True,
                        distilled_ensemble=self.distill_ensemble,
                    )
                return self._run_chain(plan, factory, directory, finished,
                                       epoch_seed)

    def run_seeds(self, seeds, train_data, **run_kwargs):
        """Runs this chain once per seed and summarizes the seeds: a study.

        Each seed's chain is this runner's with `seed` set to it, in
        `directory/seed-K` (nothing written without a `directory`); a
        finished seed is loaded, not trained again. The summary gives every
        model's mean and 95% confidence interval, and its paired
        difference against the teacher of the same seed
        (`kdtrain.study`).

        Args:
            seeds: Distinct integers >= 0, e.g. `[0, 1, 2]`.
            train_data: The training data, as for `run`.
            **run_kwargs: Other arguments of `run` (`validation_data`,
                `test_data`, `epochs`...), the same for every seed.

        Returns:
            A `kdtrain.study.StudyResult`: `to_markdown()` prints the table,
            `results[seed]` is each seed's `GenerationResult`.

        Example:

        ```python
        runner = kdtrain.GenerationRunner(build_model, generations=2,
                                          directory="study-digits")
        study = runner.run_seeds([0, 1, 2], (x, y), test_data=(xt, yt),
                                 epochs=10)
        print(study.to_markdown())
        ```
        """
        from kdtrain.study import run_study  # noqa: PLC0415

        if self.retrain_from is not None:
            raise ValueError(
                "`retrain_from` discards generations of one run: on a "
                "study it would retrain every seed again after each "
                "interruption. Retrain the seed's run in its own directory "
                "(directory/seed-K), then call run_seeds again. Received: "
                f"retrain_from={self.retrain_from!r}"
            )

        def run_seed(seed, directory):
            runner = GenerationRunner(**dict(self._arguments, seed=seed,
                                             directory=directory))
            return runner.run(train_data, **run_kwargs)

        return run_study(seeds, run_seed, self._arguments["directory"])

    def _run_chain(self, plan, factory, directory, finished, epoch_seed):
        """The Born-Again procedure: load or train each generation (and the
        student distilled from their ensemble), then evaluate the models
        and the ensembles."""
        board, bars = self._monitors
        shared = [c for c in (plan.callbacks if isinstance(
            plan.callbacks, (list, tuple)) else []) if is_chain_callback(c)]
        events = ChainEvents([board, bars, *shared])
        evaluation = ChainEvaluation(plan.evaluation_splits,
                                     plan.label_format, self.metrics, events)
        trainer = GenerationTrainer(self, plan, factory, directory,
                                    epoch_seed, [board, bars], evaluation)
        generations, trained, ending = [], [], {"completed": False}
        if self.teacher is not None:
            kind = resolve_output_kind(self.teacher, self.teacher_outputs,
                                       "teacher_outputs")
            generations.append(Generation(0, self.teacher, kind))
        indices = list(range(plan.first, self.generations + 1))
        if self.distill_ensemble:
            indices.append(distilled_ensemble_index(self.generations))
        events.on_chain_begin({
            "models": len(indices),
            "finished": len(finished), "directory": self.directory,
        })
        try:
            for index in indices:
                if index in finished:
                    generations.append(trainer.load(index, finished[index]))
                    continue
                events.on_generation_begin(index, {
                    "name": model_name(index), "label": model_label(index),
                })
                generation = trainer.train(index, generations)
                generations.append(generation)
                trained.append(index)
                history = generation.record.get("history") or {}
                events.on_generation_end(
                    index, {k: v[-1] for k, v in history.items() if v}
                )
            distilled = generations.pop() if self.distill_ensemble else None
            result = self._finish(plan, directory, generations, evaluation,
                                  distilled)
            ending = {"completed": True, "table": result.table,
                      "trained": trained, **summary(self, plan)}
            return result
        finally:
            events.on_chain_end(ending)

    def _finish(self, plan, directory, generations, evaluation,
                distilled=None):
        """The table (reused from a finished run's results), results.json.

        `distilled` is the student distilled from the ensemble, or None.
        """
        saved = directory.read_results(lenient=True) if directory else None
        everyone = generations + ([distilled] if distilled is not None
                                  else [])
        trained = everyone[plan.first:]
        # A finished run's table stands, also for a rerun without evaluation.
        reuse = bool(saved and saved.get("complete") and saved.get("table")
                     is not None and (not plan.evaluation_splits or table_splits(
                         saved["table"]) == list(plan.evaluation_splits)))
        if reuse and all(g.record.get("sha256") for g in trained):
            table = saved["table"]
            ensemble, with_teacher = evaluation.ensembles(generations)
        else:
            table, ensemble, with_teacher = evaluation.table(
                generations, distilled_ensemble=distilled
            )
        for generation in trained:
            # Returned ready to `evaluate` on the labels.
            compile_for_labels(generation.model, generation.output_kind,
                               plan.label_format, self.make_optimizer(),
                               self.metrics)
        if directory is not None:
            directory.write_results({
                "complete": True,
                # The version that wrote it: the command line prints a
                # finished run's table without TensorFlow only for its own.
                "kdtrain_version": __version__,
                "config": plan.config,
                "generations": {
                    g.name: g.record for g in everyone if g.record
                },
                "table": table,
            })
        return GenerationResult(
            [g.model for g in generations], ensemble, with_teacher, table,
            {g.name: g.history for g in everyone},
            directory=self.directory, config=plan.config,
            distilled_ensemble=None if distilled is None else distilled.model,
        )
