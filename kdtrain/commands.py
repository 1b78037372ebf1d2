"""What the `kdtrain` subcommands do, once `kdtrain.cli` has parsed them."""

import copy
import io
import os
import pathlib
import shlex
import signal
import sys
import tomllib

import keras

from kdtrain import data as data_module
from kdtrain import losses as losses_module
from kdtrain import models as models_module
from kdtrain.cli import CONFIG_FILE
from kdtrain.cli import EXIT_FAILURE
from kdtrain.cli import EXIT_INTERRUPTED
from kdtrain.cli import EXIT_OK
from kdtrain.cli import EXIT_USAGE
from kdtrain.cli import UsageError
from kdtrain.cli import OPTIONS
from kdtrain.cli import options_for
from kdtrain.cli import read_config
from kdtrain.generations import GenerationRunner
from kdtrain.generations import RESULTS_FILE
from kdtrain.results import default_split
from kdtrain.results import markdown_table
from kdtrain.runfiles import read_json
from kdtrain.runfiles import write_bytes_atomically
from kdtrain.runfiles import write_text_atomically


def _error(message):
    print(f"kdtrain: error: {message}", file=sys.stderr)


def run(command, settings, argv):
    """Runs a parsed command; returns the exit code."""
    handlers = {"ban": ban, "distill": distill, "evaluate": evaluate,
                "report": report}
    resume = "kdtrain " + shlex.join(argv)
    if settings.get("distribute") == "multi_worker" and not settings.get(
        "dry_run"
    ):
        strategy(settings)  # before any other TensorFlow work, as it must
    interrupted = []

    def on_interrupt(signum, frame):
        # Ctrl-C inside TensorFlow's C++ code may surface as another error.
        interrupted.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        return handlers[command](settings)
    except (UsageError, data_module.DatasetNotFoundError) as error:
        _error(error)
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - any failure while training
        if interrupted:
            return _interrupted(settings, resume)
        _error(
            f"training failed: {type(error).__name__}: {error}\n"
            f"Finished generations are kept in {settings.get('directory')}; "
            f"after fixing the cause, resume with: {resume}"
        )
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return _interrupted(settings, resume)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(settings, resume):
    _error(
        "interrupted. Finished generations are kept in "
        f"{settings.get('directory')}; resume with: {resume}"
    )
    return EXIT_INTERRUPTED


class _TrainingStarted(keras.callbacks.Callback):
    """Marks that a training step finished: later errors are failures.

    Errors before the first step (bad options, data that cannot fit the
    model, another run's directory) are bad input, exit code 2.
    """

    def __init__(self, flag):
        super().__init__()
        self.flag = flag

    def on_train_batch_end(self, batch, logs=None):
        self.flag["started"] = True


# Settings to library objects -----------------------------------------------


def data_options(settings):
    """`kdtrain.data.load` options from the command's settings."""
    options = {
        "batch_size": settings["batch_size"],
        "validation_split": settings["validation_split"],
        "seed": settings["seed"],
        "augment": None if settings["augment"] == "none" else settings["augment"],
        "scaling": settings["scaling"],
        "train_size": settings["train_size"],
        "test_size": settings["test_size"],
    }
    if settings["data_dir"]:
        key = "directory" if settings["dataset"] == "image_folder" else "data_dir"
        options[key] = settings["data_dir"]
    if settings["image_size"]:
        options["image_size"] = (settings["image_size"],) * 2
    if settings["dataset"] == "image_folder" and settings["num_classes"]:
        options["num_classes"] = settings["num_classes"]
    return options


def model_builder(name, info, settings):
    """A function building a fresh model `name` for the dataset `info`."""
    kwargs = {}
    if name.startswith("wrn-") and settings["dropout"]:
        kwargs["dropout"] = settings["dropout"]

    def build_model():
        return models_module.build(
            name,
            num_classes=info.output_units,
            input_shape=info.input_shape,
            output=settings["output"],
            **kwargs,
        )

    return build_model


def distillation_loss(settings):
    if settings["loss"] == "none":
        return None
    return losses_module.get(settings["loss"], temperature=settings["temperature"])


def feature_losses(settings):
    """The feature losses the settings ask for (attention transfer)."""
    if not settings["attention_transfer"]:
        return []
    layers = []
    for item in settings["attention_transfer"].split(","):
        names = [name.strip() for name in item.split(":")]
        if not all(names) or len(names) > 2:
            raise UsageError(
                "--attention-transfer takes comma-separated layer names, or "
                "student:teacher pairs. Received: "
                f"{settings['attention_transfer']!r}"
            )
        layers.append(names[0] if len(names) == 1 else tuple(names))
    return [losses_module.AttentionTransfer(
        layers, weight=settings["attention_weight"]
    )]


def optimizer_config(settings):
    config = {"class_name": settings["optimizer"], "config": {}}
    if settings["learning_rate"] is not None:
        config["config"]["learning_rate"] = settings["learning_rate"]
    try:
        keras.optimizers.get(dict(config, config=dict(config["config"])))
    except ValueError as error:
        raise UsageError(
            f"--optimizer {settings['optimizer']!r} is not a Keras optimizer: "
            f"{error}"
        ) from None
    return config


def callbacks(settings, has_validation):
    patience = settings["early_stopping_patience"]
    if not patience:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss" if has_validation else "loss",
            patience=patience,
            restore_best_weights=True,
        )
    ]


def write_config(settings, directory):
    """Records the run's settings as `directory/config.toml`."""
    keys = [o.key for o in options_for(settings["command"])]
    lines = [f"# kdtrain {settings['command']}: the settings of this run.",
             f"# Rerun with: kdtrain {settings['command']} --config "
             f"{os.path.join(directory, CONFIG_FILE)}",
             f"command = {_toml_value(settings['command'])}"]
    for key in keys:
        value = settings[key]
        if value is None or key in ("overwrite",):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    path = pathlib.Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "\n".join(lines) + "\n")


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_run_config(directory):
    """The settings a run recorded in its directory."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.exists():
        raise UsageError(
            f"{directory} holds no kdtrain run (no {CONFIG_FILE}). Run "
            "`kdtrain ban --directory ...` first."
        )
    with open(path, "rb") as file:
        command = tomllib.load(file).get("command", "ban")
    settings = {o.key: o.default for o in options_for(command)}
    settings.update(read_config(path, command))
    settings["command"] = command
    settings["directory"] = os.fspath(directory)
    return settings


# Commands -------------------------------------------------------------------


def _dry_run(settings, model_names):
    info = data_module.describe(settings["dataset"], **data_options(settings))
    distillation_loss(settings)
    optimizer_config(settings)
    print(f"dataset {info.name}: input {info.input_shape}, "
          f"{info.num_classes} classes, labels {info.label_format}, "
          f"augmented {info.augmented}, batch {settings['batch_size']}")
    for role, name in model_names:
        model = model_builder(name, info, settings)()
        print(f"{role}: {name}, {model.count_params():,} parameters, "
              f"output {model.outputs[0].shape}")
    print("configuration valid; nothing trained (--dry-run)")
    return EXIT_OK


def _runner(settings, info, generations, build_teacher=None):
    """The GenerationRunner a `ban` or `distill` run trains with."""
    return GenerationRunner(
        model_builder(settings["model"], info, settings),
        generations=generations,
        teacher=_load_teacher(settings),
        build_teacher=build_teacher,
        distillation_loss=distillation_loss(settings),
        ground_truth_weight=settings["ground_truth_weight"],
        optimizer=optimizer_config(settings),
        directory=settings["directory"],
        teach_from=settings.get("teach_from", "previous"),
        seed=settings["seed"],
        overwrite=settings["overwrite"],
        tensorboard=settings["tensorboard"],
        progress=settings["progress"],
        cache_teacher={"auto": "auto", "on": True, "off": False}[
            settings["cache_teacher"]
        ],
        strategy=strategy(settings),
        feature_losses=feature_losses(settings),
    )


def strategy(settings):
    """The tf.distribute strategy `--distribute` names, created once."""
    name = settings["distribute"]
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


def _train(settings, generations, build_teacher=None):
    """Loads the data, checks the directory, runs the chain."""
    try:
        loaded = data_module.load(settings["dataset"], **data_options(settings))
        if build_teacher is not None:
            build_teacher = model_builder(build_teacher, loaded.info, settings)
        runner = _runner(settings, loaded.info, generations, build_teacher)
        _claim_directory(settings)
    except ValueError as error:
        raise UsageError(str(error)) from error
    flag = {"started": False}
    user_callbacks = callbacks(settings, loaded.validation is not None)
    try:
        return runner.run(
            loaded.train,
            validation_data=loaded.validation,
            test_data=loaded.test,
            epochs=settings["epochs"],
            teacher_epochs=settings["teacher_epochs"],
            callbacks=lambda generation: [
                *copy.deepcopy(user_callbacks), _TrainingStarted(flag)
            ],
        )
    except ValueError as error:
        if flag["started"]:
            raise
        raise UsageError(str(error)) from error


def _claim_directory(settings):
    """Records the settings in the run's directory, refusing another run's.

    The runner checks the chain itself; this keeps `config.toml`, which
    `kdtrain evaluate` rebuilds the data from, from being overwritten by a
    run of other settings.
    """
    directory = settings["directory"]
    path = pathlib.Path(directory) / CONFIG_FILE
    if path.exists() and not settings["overwrite"]:
        saved = read_run_config(directory)
        ignored = {"overwrite", "tensorboard", "progress", "directory"}
        differences = [
            f"  {key}: {saved.get(key)!r} in the directory, "
            f"{settings.get(key)!r} now"
            for key in sorted(set(saved) | set(settings))
            if key not in ignored and key in {o.key for o in OPTIONS}
            and saved.get(key) != settings.get(key)
        ]
        if differences:
            raise UsageError(
                f"{directory} holds a run with other settings:\n"
                + "\n".join(differences)
                + "\nNothing was changed. Use another --directory, or "
                "--overwrite to start afresh there."
            )
        return
    write_config(settings, directory)


def _print_result(result, settings):
    print(result.to_markdown())
    print(f"\nCheckpoints, results.json and TensorBoard logs: "
          f"{settings['directory']}")
    if settings["tensorboard"]:
        print(f"Watch: tensorboard --logdir "
              f"{os.path.join(settings['directory'], 'logs')}")


def ban(settings):
    """Teacher, Born-Again generations and ensembles; prints the table."""
    settings["command"] = "ban"
    if settings.pop("dry_run"):
        return _dry_run(settings, [("generations", settings["model"])])
    result = _train(settings, settings["generations"])
    _print_result(result, settings)
    return EXIT_OK


def distill(settings):
    """One teacher (trained here or loaded) into a student; prints the table."""
    settings["command"] = "distill"
    trained_here = not settings["teacher"]
    roles = [("student", settings["model"])]
    if trained_here:
        roles.insert(0, ("teacher", settings["teacher_model"]))
    if settings.pop("dry_run"):
        return _dry_run(settings, roles)
    teacher = settings["teacher_model"] if trained_here else None
    result = _train(settings, 1, build_teacher=teacher)
    teacher_name = settings["teacher_model"] if trained_here else "teacher"
    labels = {"teacher": f"Teacher ({teacher_name})",
              "gen-1": f"Student ({settings['model']})"}
    for row in result.table:
        row["label"] = labels.get(row["name"], row["label"])
    _print_result(result, settings)
    return EXIT_OK


def _load_teacher(settings):
    if not settings["teacher"]:
        return None
    path = settings["teacher"]
    if not os.path.exists(path):
        raise UsageError(f"--teacher {path!r}: no such file.")
    return keras.saving.load_model(path)


def _results(directory):
    path = pathlib.Path(directory) / RESULTS_FILE
    if not path.exists():
        raise UsageError(f"{directory} holds no {RESULTS_FILE}: no run there.")
    return read_json(path)


def evaluate(settings):
    """Every model and ensemble of a finished run on its test split."""
    directory = settings["directory"]
    saved = read_run_config(directory)
    if not _results(directory).get("complete"):
        raise UsageError(
            f"The run in {directory} is not finished. Resume it with: "
            f"kdtrain {saved['command']} --config "
            f"{os.path.join(directory, CONFIG_FILE)}"
        )
    saved.update(progress=False, tensorboard=False, overwrite=False)
    teacher = None
    if saved["command"] == "distill" and not saved["teacher"]:
        teacher = saved["teacher_model"]
    # Every generation is finished: the runner loads them and evaluates.
    result = _train(saved, saved.get("generations", 1), build_teacher=teacher)
    print(result.to_markdown(split="test"))
    return EXIT_OK


def report(settings):
    """The run's table as Markdown and a PNG plot, written into its folder."""
    directory = pathlib.Path(settings["directory"])
    results = _results(directory)
    table = results.get("table")
    if not table:
        raise UsageError(
            f"The run in {directory} has no table yet: it is not finished."
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise UsageError(
            "kdtrain report draws with matplotlib: pip install 'kdtrain[plot]'"
        ) from None
    split = default_split(table)
    markdown = (f"# {directory.name}\n\nTest split: {split}.\n\n"
                + markdown_table(table, split) + "\n")
    write_text_atomically(directory / "report.md", markdown)
    rows = [row for row in table if row["split"] == split]
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        labels = [row["label"] for row in rows]
        values = [row.get(metric) or 0.0 for row in rows]
        colors = ["tab:blue" if row["name"].startswith(("teacher", "gen-"))
                  else "tab:orange" for row in rows]
        axis.bar(range(len(rows)), values, color=colors)
        axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        axis.set_title(f"{split} {metric}")
        if metric == "accuracy":
            low = min(values)
            axis.set_ylim(max(0.0, low - (1 - low)), 1.0)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    write_bytes_atomically(directory / "report.png", buffer.getvalue())
    print(markdown)
    print(f"Wrote {directory / 'report.md'} and {directory / 'report.png'}")
    return EXIT_OK
