"""What the `kdtrain` subcommands do, once `kdtrain.options` has parsed them."""

import dataclasses
import os
import shlex
import signal
import sys

import keras

from kdtrain.callbacks.generation import GenerationCallback
from kdtrain import data as data_module
from kdtrain import run_export
from kdtrain import files
from kdtrain import losses as losses_module
from kdtrain import models as models_module
from kdtrain import tradeoff
from kdtrain.chain import ChainDirectory
from kdtrain.chain import GenerationRunner
from kdtrain.chain import RunDirectoryError
from kdtrain.chain.evaluation import ChainEvaluation
from kdtrain.chain.generation import Generation
from kdtrain.chain.lock import DirectoryLock
from kdtrain.chain.results import distilled_ensemble_index
from kdtrain.chain.results import markdown_table
from kdtrain.chain.splits import DataSplit
from kdtrain.options import CONFIG_FILE
from kdtrain.quick import distill_labels
from kdtrain.options import EXIT_FAILURE
from kdtrain.options import EXIT_INTERRUPTED
from kdtrain.options import EXIT_OK
from kdtrain.options import EXIT_USAGE
from kdtrain.options import UsageError
from kdtrain.options import config_text
from kdtrain.options import default_threads
from kdtrain.options import in_flags
from kdtrain.options import read_run_config


def _error(message):
    # Messages of the Python API name arguments (data_dir=...): here the
    # user typed flags.
    print(f"kdtrain: error: {in_flags(str(message))}", file=sys.stderr)


def run(command, settings, argv):
    """Runs a parsed command; returns the exit code."""
    handlers = {"ban": ban, "distill": distill, "sweep": sweep,
                "evaluate": evaluate, "export": run_export.run}
    resume = "kdtrain " + shlex.join(_resume_arguments(argv))
    _set_threads(settings)
    if settings.distribute == "multi_worker" and not settings.dry_run:
        strategy(settings)  # before any other TensorFlow work, as it must
    interrupted = []

    def on_interrupt(signum, frame):
        # Ctrl-C inside TensorFlow's C++ code may surface as another error.
        interrupted.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        return handlers[command](settings)
    except RunDirectoryError as error:
        _error(error.describe("cli"))
        return EXIT_USAGE
    except (UsageError, data_module.DatasetNotFoundError) as error:
        _error(error)
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - any failure while training
        if interrupted:
            return _interrupted(settings, resume)
        if command in ("evaluate", "report", "export"):
            _error(f"{command} failed: {type(error).__name__}: {error}")
            return EXIT_FAILURE
        _error(f"training failed: {type(error).__name__}: {error}\n"
               + _kept(settings, f"after fixing the cause, resume with: "
                                 f"{resume}"))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return _interrupted(settings, resume)
    finally:
        signal.signal(signal.SIGINT, previous)


def _set_threads(settings):
    """TensorFlow's threads per op, set before its runtime starts."""
    import tensorflow as tf

    threads = settings.threads or default_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # already started (a second command in a process)
        pass


def _resume_arguments(argv):
    """The command line that resumes: without the flags that discard work."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument in ("--retrain-from", "--overwrite"):
            skip = argument == "--retrain-from"
        elif not argument.startswith(("--retrain-from=", "--no-overwrite")):
            kept.append(argument)
    return kept


def _kept(settings, then):
    return f"Finished generations are kept in {settings.directory}; {then}"


def _interrupted(settings, resume):
    _error("interrupted. " + _kept(settings, f"resume with: {resume}"))
    return EXIT_INTERRUPTED


class _TrainingStarted(GenerationCallback):
    """Marks that a training step finished: later errors are failures.

    Errors before the first step (bad options, data that cannot fit the
    model, another run's directory) are bad input, exit code 2. A chain
    callback, so every generation shares this one.
    """

    def __init__(self, flag):
        super().__init__()
        self.flag = flag

    def on_train_batch_end(self, batch, logs=None):
        self.flag["started"] = True


class _RecordSettings(GenerationCallback):
    """Writes `config.toml` once the runner has claimed the directory.

    Not before: a command that fails its checks writes nothing. A chain of
    a study or a sweep also writes the settings of the whole command
    (`outer`) into the study's or sweep's directory.
    """

    def __init__(self, settings, outer=None):
        super().__init__()
        self.settings = settings
        self.outer = outer

    def on_chain_begin(self, logs=None):
        # The runner's own directory: a non-chief worker writes worker-K/.
        ChainDirectory(logs["directory"]).write_config_text(
            config_text(self.settings)
        )
        if self.outer is not None:
            files.write_text_atomically(
                os.path.join(self.outer.directory, CONFIG_FILE),
                config_text(self.outer),
            )


# Settings to library objects -----------------------------------------------


def data_options(settings):
    """`kdtrain.data.load` options from the command's settings."""
    options = {
        "batch_size": settings.batch_size,
        "validation_split": settings.validation_split,
        "seed": settings.seed,
        "augment": None if settings.augment == "none" else settings.augment,
        "scaling": settings.scaling,
        "train_size": settings.train_size,
        "test_size": settings.test_size,
    }
    if settings.data_dir:
        key = "directory" if settings.dataset == "image_folder" else "data_dir"
        options[key] = settings.data_dir
    if settings.image_size:
        options["image_size"] = (settings.image_size,) * 2
    if settings.dataset == "image_folder" and settings.num_classes:
        options["num_classes"] = settings.num_classes
    return options


def model_builder(name, info, settings):
    """A function building a fresh model `name` for the dataset `info`."""
    kwargs = {}
    if name.startswith("wrn-") and settings.dropout:
        kwargs["dropout"] = settings.dropout

    def build_model():
        return models_module.build(
            name,
            num_classes=info.output_units,
            input_shape=info.input_shape,
            output=settings.output,
            **kwargs,
        )

    return build_model


def distillation_loss(settings):
    if settings.loss == "none":
        return None
    kwargs = {"temperature": settings.temperature}
    if settings.standardize_logits:
        kwargs["standardize"] = True
    return losses_module.get(settings.loss, **kwargs)


def feature_losses(settings):
    """The feature losses the settings ask for (attention transfer)."""
    if not settings.attention_transfer:
        return []
    layers = []
    for item in settings.attention_transfer.split(","):
        names = [name.strip() for name in item.split(":")]
        if not all(names) or len(names) > 2:
            raise UsageError(
                "--attention-transfer takes comma-separated layer names, or "
                "student:teacher pairs. Received: "
                f"{settings.attention_transfer!r}"
            )
        layers.append(names[0] if len(names) == 1 else tuple(names))
    return [losses_module.AttentionTransfer(
        layers, weight=settings.attention_weight
    )]


def optimizer_config(settings):
    config = {"class_name": settings.optimizer, "config": {}}
    if settings.learning_rate is not None:
        config["config"]["learning_rate"] = settings.learning_rate
    try:
        keras.optimizers.get(dict(config, config=dict(config["config"])))
    except ValueError as error:
        raise UsageError(
            f"--optimizer {settings.optimizer!r} is not a Keras optimizer: "
            f"{error}"
        ) from None
    return config


def callbacks(settings, has_validation):
    patience = settings.early_stopping_patience
    if not patience:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss" if has_validation else "loss",
            patience=patience,
            restore_best_weights=True,
        )
    ]


def strategy(settings):
    """The tf.distribute strategy `--distribute` names, created once."""
    name = settings.distribute
    if name == "none":
        return None
    if name not in _STRATEGIES:
        import tensorflow as tf

        _STRATEGIES[name] = (
            tf.distribute.MirroredStrategy() if name == "mirrored"
            else tf.distribute.MultiWorkerMirroredStrategy()
        )
    return _STRATEGIES[name]


_STRATEGIES = {}


def _load_teacher(settings):
    if not settings.teacher:
        return None
    try:
        return files.load_model_file(settings.teacher, "--teacher")
    except ValueError as error:
        raise UsageError(str(error)) from None


def _runner(settings, info, generations, build_teacher=None):
    """The GenerationRunner a `ban` or `distill` run trains with."""
    return GenerationRunner(
        model_builder(settings.model, info, settings),
        generations=generations,
        teacher=_load_teacher(settings),
        build_teacher=build_teacher,
        distillation_loss=distillation_loss(settings),
        ground_truth_weight=settings.ground_truth_weight,
        optimizer=optimizer_config(settings),
        directory=settings.directory,
        teach_from=getattr(settings, "teach_from", "previous"),
        seed=settings.seed,
        overwrite=settings.overwrite,
        tensorboard=settings.tensorboard,
        progress=settings.progress,
        verbose=2,  # without tqdm bars: one line per epoch
        cache_teacher={"auto": "auto", "on": True, "off": False}[
            settings.cache_teacher
        ],
        strategy=strategy(settings),
        feature_losses=feature_losses(settings),
        deterministic=settings.deterministic,
        retrain_from=settings.retrain_from,
        settings=settings.identity(),
        distill_ensemble=getattr(settings, "distill_ensemble", False),
    )


# Commands -------------------------------------------------------------------


def _dry_run(settings, model_names):
    info = data_module.describe(settings.dataset, **data_options(settings))
    distillation_loss(settings)
    optimizer_config(settings)
    print(f"dataset {info.name}: input {info.input_shape}, "
          f"{info.num_classes} classes, labels {info.label_format}, "
          f"augmented {info.augmented}, batch {settings.batch_size}")
    for role, name in model_names:
        model = model_builder(name, info, settings)()
        print(f"{role}: {name}, {model.count_params():,} parameters, "
              f"output {model.outputs[0].shape}")
    print("configuration valid; nothing trained (--dry-run)")
    return EXIT_OK


def _train(settings, generations, build_teacher=None, outer=None):
    """Loads the data, checks everything, runs the chain.

    `outer` is the settings of the study or sweep the chain belongs to.
    """
    DirectoryLock(settings.directory).check()  # Refuse at once if in use.
    options, augmentation = data_options(settings), None
    if settings.deterministic and settings.augment != "none":
        # The runner augments, each batch's draws from its seeds.
        if settings.scaling == "normalize":
            raise UsageError(
                "--deterministic augments after the data are scaled, which "
                "--scaling normalize would reorder; use --scaling rescale."
            )
        options["augment"] = None
        augmentation = data_module.augmentation(settings.augment,
                                                seed=settings.seed)
    try:
        loaded = data_module.load(settings.dataset, **options)
        if build_teacher is not None:
            build_teacher = model_builder(build_teacher, loaded.info, settings)
        runner = _runner(settings, loaded.info, generations, build_teacher)
    except RunDirectoryError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from error
    flag = {"started": False}
    chain_callbacks = [
        *callbacks(settings, loaded.validation is not None),
        _TrainingStarted(flag),
        _RecordSettings(settings, outer),
    ]
    try:
        return runner.run(
            loaded.train,
            validation_data=loaded.validation,
            test_data=loaded.test,
            epochs=settings.epochs,
            teacher_epochs=settings.teacher_epochs,
            callbacks=chain_callbacks,
            augmentation=augmentation,
        )
    except RunDirectoryError:
        raise
    except ValueError as error:
        if flag["started"]:
            raise
        raise UsageError(str(error)) from error


def _print_result(result, settings):
    print(result.to_markdown())
    print(f"\nCheckpoints, results.json and TensorBoard logs: "
          f"{settings.directory}")
    if settings.tensorboard:
        print(f"Watch: tensorboard --logdir "
              f"{os.path.join(settings.directory, 'logs')}")


def ban(settings):
    """Teacher, Born-Again generations and ensembles; prints the table."""
    if settings.dry_run:
        return _dry_run(settings, [("generations", settings.model)])
    if settings.seeds is not None:
        return _study(settings, lambda seeded: _train(
            seeded, seeded.generations, outer=settings))
    result = _train(settings, settings.generations)
    _print_result(result, settings)
    return EXIT_OK


def distill(settings):
    """One teacher (trained here or loaded) into a student; prints the table."""
    trained_here = not settings.teacher
    roles = [("student", settings.model)]
    if trained_here:
        roles.insert(0, ("teacher", settings.teacher_model))
    if settings.dry_run:
        return _dry_run(settings, roles)
    teacher = settings.teacher_model if trained_here else None

    def train(seeded):
        result = _train(seeded, 1, build_teacher=teacher,
                        outer=settings if settings.seeds else None)
        labels = distill_labels(seeded)
        for row in result.table:
            row["label"] = labels.get(row["name"], row["label"])
        return result

    if settings.seeds is not None:
        return _study(settings, train)
    _print_result(train(settings), settings)
    return EXIT_OK


def _study(settings, train):
    """Runs `train(settings of seed K)` for each seed of `--seeds`."""
    from kdtrain import study

    try:
        study.check_directory(settings.directory)
    except ValueError as error:
        raise UsageError(str(error)) from None

    def run_seed(seed, directory):
        print(f"Seed {seed} ({settings.seeds.index(seed) + 1} of "
              f"{len(settings.seeds)}): {directory}", flush=True)
        return train(dataclasses.replace(settings, seeds=None, seed=seed,
                                         directory=directory))

    result = study.run_study(settings.seeds, run_seed, settings.directory)
    print(result.to_markdown())
    print(f"\nEach seed's run (seed-K) and the study's results.json: "
          f"{settings.directory}")
    return EXIT_OK


def sweep(settings):
    """One teacher, one student per grid point; prints the grid's table."""
    from kdtrain import sweep as sweep_module

    points = sweep_module.make_grid(settings.loss, settings.temperature,
                                    settings.ground_truth_weight)
    if settings.dry_run:
        for point in points:
            distillation_loss(dataclasses.replace(settings, **point))
        print(f"grid: {len(points)} points, "
              f"{', '.join(map(sweep_module.point_name, points))}")
        return _dry_run(dataclasses.replace(settings, **points[0]),
                        [("teacher and students", settings.model)])
    try:
        sweep_module.check_directory(settings.directory)
    except ValueError as error:
        raise UsageError(str(error)) from None

    def run_point(point, seed, directory, first):
        print(f"Point {sweep_module.point_name(point)}, seed {seed}: "
              f"{directory}", flush=True)
        teacher = settings.teacher or (None if first is None else
                                       ChainDirectory(first.directory)
                                       .model_path(0))
        chain = dataclasses.replace(
            settings, command="ban", generations=1, seeds=None, seed=seed,
            directory=directory, teacher=teacher, **point,
        )
        return _train(chain, 1, outer=settings)

    value = sweep_module.run_sweep(
        points, run_point, settings.directory,
        settings.seeds or (settings.seed,),
        per_seed=settings.seeds is not None,
    )
    print(sweep_module.sweep_markdown(value))
    print(f"\nEach point's run and the sweep's results.json: "
          f"{settings.directory}")
    return EXIT_OK


def _finished_results(directory, saved):
    results = directory.read_results()
    if not results or not results.get("complete"):
        raise UsageError(
            f"The run in {directory.path} is not finished. Resume it with: "
            f"kdtrain {saved.command} --config "
            f"{os.path.join(directory.path, CONFIG_FILE)}"
        )
    return results


def _given_teacher(saved, results):
    """The run's `--teacher` file, checked to be the one it was taught by."""
    from kdtrain.run_models import given_teacher

    return given_teacher(saved.teacher, results)


def evaluate(settings):
    """Evaluates every model file of a finished run on its test split."""
    directory = ChainDirectory(settings.directory)
    saved = read_run_config(directory.path)
    directory.lock.acquire(shared=True)  # Other readers may overlap.
    try:
        table = _evaluate_files(directory, saved)
    except RunDirectoryError as error:
        if error.generation is None:
            raise
        raise UsageError(
            error.describe("cli") + " (to `kdtrain "
            f"{saved.command} --config {directory.config_path}`)"
        ) from None
    finally:
        directory.lock.release()
    if saved.command == "distill":
        labels = distill_labels(saved)
        for row in table:
            row["label"] = labels.get(row["name"], row["label"])
    print(markdown_table(table, split="test"))
    if getattr(settings, "tradeoff", True):
        data = tradeoff.measure_run(directory.path, table)
        print(f"\nWhat each model costs ({tradeoff.TRADEOFF_FILE}):\n")
        print(tradeoff.markdown_table(data))
    return EXIT_OK


def _evaluate_files(directory, saved):
    """The test-split table of a finished run's model files."""
    results = _finished_results(directory, saved)
    first = 1 if saved.teacher else 0
    last = saved.generations if saved.command == "ban" else 1
    distilled = bool(results["config"].get("distill_ensemble"))
    records = directory.finished_records(first, last,
                                         distilled_ensemble=distilled)
    generations = []
    if first == 1:
        generations.append(Generation(0, _given_teacher(saved, results),
                                      "auto"))
    indices = list(range(first, last + 1))
    if distilled:  # the student distilled from the ensemble, last
        indices.append(distilled_ensemble_index(last))
    for index in indices:
        record = records[index]
        generations.append(Generation.from_record(
            index, directory.load_model(index, record),
            record["output_kind"], record,
        ))
    loaded = data_module.load(saved.dataset, **data_options(saved))
    evaluation = ChainEvaluation(
        {"test": DataSplit(loaded.test, None, "test_data")},
        loaded.info.label_format, results["config"]["metrics"],
    )
    student = generations.pop() if distilled else None
    return evaluation.table(generations, recompute=True,
                            distilled_ensemble=student)[0]
