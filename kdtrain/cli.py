"""The `kdtrain` command: Born-Again chains and distillation, configured by
flags or a TOML file.

    kdtrain ban                          # digits, WRN-16-1, 3 generations
    kdtrain ban --config experiments/fashion_mnist_wrn16_1.toml
    kdtrain distill --teacher-model mobilenet_v2 --model wrn-16-4 ...
    kdtrain evaluate runs/ban-digits-wrn-16-1
    kdtrain report runs/ban-digits-wrn-16-1

Exit codes: 0 done; 2 bad usage or configuration; 1 a failure during
training; 130 interrupted (finished generations are kept).
"""

import argparse
import dataclasses
import difflib
import math
import os
import sys
import tomllib

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONFIG_FILE = "config.toml"


class UsageError(Exception):
    """Bad usage or configuration: exit code 2, nothing trained."""


# Options ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: a `--flag` and the same `key` in a config file."""

    key: str
    type: type
    default: object
    help: str
    commands: tuple = ("ban", "distill")
    choices: tuple = None
    minimum: float = None
    maximum: float = None
    exclusive_minimum: bool = False
    optional: bool = False  # None is a valid value ("not set")

    @property
    def flag(self):
        return "--" + self.key.replace("_", "-")


def _options():
    data, train = ("ban", "distill"), ("ban", "distill")
    return [
        # Data
        Option("dataset", str, "digits", "dataset name", data,
               choices=("digits", "fashion_mnist", "cifar10", "cifar100",
                        "image_folder")),
        Option("data_dir", str, None, "folder of the dataset's files (the "
               "class folders' root for image_folder)", data, optional=True),
        Option("image_size", int, None, "resize image_folder images to this "
               "square size", data, minimum=8, optional=True),
        Option("num_classes", int, None, "classes of an image_folder dataset, "
               "for --dry-run without the files", data, minimum=2,
               optional=True),
        Option("batch_size", int, 32, "batch size", data, minimum=1),
        Option("validation_split", float, 0.1, "fraction of the training data "
               "held out for validation (when the dataset has no own split)",
               data, minimum=0.0, maximum=0.9),
        Option("train_size", int, None, "use this many training images "
               "(a fixed random subset)", data, minimum=1, optional=True),
        Option("test_size", int, None, "use this many test images",
               data, minimum=1, optional=True),
        Option("augment", str, "none", "augmentation preset", data,
               choices=("none", "cifar", "mnist", "skin_cancer")),
        Option("scaling", str, "rescale", "pixel scaling", data,
               choices=("rescale", "normalize", "none")),
        # Models
        Option("output", str, "logits", "the models' head: logits, or a "
               "softmax / sigmoid (one unit, binary data) on top", train,
               choices=("logits", "softmax", "sigmoid")),
        Option("model", str, "wrn-16-1", "architecture of the generations "
               "(ban) or of the student (distill): wrn-<depth>-<width> or a "
               "keras.applications name", train),
        Option("dropout", float, 0.0, "dropout inside Wide ResNet blocks",
               train, minimum=0.0, maximum=0.9),
        Option("teacher_model", str, "mobilenet_v2", "architecture of the "
               "teacher trained first", ("distill",)),
        Option("teacher", str, None, "a trained teacher .keras file "
               "(skips training a teacher)", train, optional=True),
        # Training
        Option("generations", int, 3, "Born-Again generations after the "
               "teacher", ("ban",), minimum=1),
        Option("epochs", int, 10, "epochs per generation", train, minimum=1),
        Option("teacher_epochs", int, None, "epochs of the teacher (default: "
               "--epochs)", train, minimum=1, optional=True),
        Option("loss", str, "soft_targets", "distillation loss on the "
               "outputs (none: only feature losses and the labels)", train,
               choices=("soft_targets", "kl", "logits_mse", "cwtm", "dkpp",
                        "none")),
        Option("temperature", float, None, "softening temperature of the "
               "loss (default: the loss's own)", train, minimum=0.0,
               exclusive_minimum=True, optional=True),
        Option("ground_truth_weight", float, 0.0, "w in (1-w)*distillation "
               "+ w*crossentropy", train, minimum=0.0, maximum=1.0),
        Option("attention_transfer", str, None, "comma-separated layers "
               "whose attention maps the student matches (e.g. "
               "group_1,group_2,group_3; student:teacher for different "
               "names)", train, optional=True),
        Option("attention_weight", float, 1000.0, "weight of the attention "
               "transfer loss", train, minimum=0.0, exclusive_minimum=True),
        Option("teach_from", str, "previous", "who teaches each generation",
               ("ban",), choices=("previous", "teacher")),
        Option("optimizer", str, "adam", "Keras optimizer name", train),
        Option("learning_rate", float, None, "learning rate (default: the "
               "optimizer's own)", train, minimum=0.0, exclusive_minimum=True,
               optional=True),
        Option("early_stopping_patience", int, None, "stop a generation after "
               "this many epochs without improvement of the validation loss, "
               "restoring its best weights", train, minimum=1, optional=True),
        Option("seed", int, 0, "random seed", train, minimum=0),
        Option("cache_teacher", str, "auto", "compute each teacher's outputs "
               "once per generation instead of on every batch (auto: when "
               "the training data are not augmented)", train,
               choices=("auto", "on", "off")),
        Option("distribute", str, "none", "tf.distribute strategy: mirrored "
               "(the GPUs of one machine) or multi_worker (a cluster "
               "described by TF_CONFIG)", train,
               choices=("none", "mirrored", "multi_worker")),
        # Output
        Option("directory", str, None, "where checkpoints, logs and results "
               "go (default: runs/<command>-<dataset>-<model>)", train,
               optional=True),
        Option("overwrite", bool, False, "replace a run of another "
               "configuration in --directory", train),
        Option("tensorboard", bool, True, "write TensorBoard logs", train),
        Option("progress", bool, True, "show tqdm progress bars", train),
    ]


OPTIONS = _options()


def options_for(command):
    return [o for o in OPTIONS if command in o.commands]


def _closest(word, candidates):
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


# Parsing ------------------------------------------------------------------


def _help_text(option):
    default = option.default
    if isinstance(default, bool):
        default = "on" if default else "off"
    text = option.help
    if option.choices:
        text += f"; one of: {', '.join(option.choices)}"
    return f"{text} (default: {default})"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kdtrain",
        description="Knowledge distillation and Born-Again Networks for "
        "Keras. Every option can also be set in a TOML file (--config), "
        "under the option's name with underscores; flags override the file.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    descriptions = {
        "ban": "Train a teacher, then Born-Again generations, then "
        "ensembles; print the table.",
        "distill": "Distill one teacher into a student of another "
        "architecture.",
    }
    for command, description in descriptions.items():
        sub = subparsers.add_parser(command, help=description,
                                    description=description,
                                    argument_default=argparse.SUPPRESS)
        sub.add_argument("--config", metavar="FILE.toml",
                         help="read options from a TOML file")
        sub.add_argument("--dry-run", action="store_true",
                         help="validate the configuration, build the models "
                         "and describe the data pipeline; train nothing")
        for option in options_for(command):
            if option.type is bool:
                sub.add_argument(option.flag, dest=option.key,
                                 action=argparse.BooleanOptionalAction,
                                 help=_help_text(option))
            else:
                sub.add_argument(option.flag, dest=option.key, type=str,
                                 metavar=option.key.upper(),
                                 help=_help_text(option))
    for command, description in (
        ("evaluate", "Evaluate every model and ensemble of a run on its test "
         "split; print the table."),
        ("report", "Write the run's table as Markdown and a PNG plot of "
         "accuracy and loss per generation (needs matplotlib)."),
    ):
        sub = subparsers.add_parser(command, help=description,
                                    description=description)
        sub.add_argument("directory", help="the run's directory")
    return parser


def _convert(option, value, source):
    """Converts a flag string or TOML value to the option's type."""
    where = f"{option.flag}" if source == "flag" else f"{option.key!r} in {source}"
    if value is None or (isinstance(value, str) and value.lower() == "none"
                         and option.optional):
        if option.optional:
            return None
        raise UsageError(f"{where} needs a value.")
    try:
        if option.type is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif option.type is int:
            if isinstance(value, bool) or (
                isinstance(value, float) and not value.is_integer()
            ):
                raise TypeError
            value = int(value)
        elif option.type is float:
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        elif not isinstance(value, str):
            raise TypeError
    except (TypeError, ValueError):
        raise UsageError(
            f"{where} must be {option.type.__name__}. Received: {value!r}"
        ) from None
    _check_range(option, value, where)
    return value


def _check_range(option, value, where):
    if option.choices and value not in option.choices:
        raise UsageError(
            f"{where} must be one of {', '.join(option.choices)}. "
            f"Received: {value!r}.{_closest(str(value), option.choices)}"
        )
    if option.type in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{where} must be finite. Received: {value!r}")
        low, high = option.minimum, option.maximum
        if low is not None and (
            value < low or (option.exclusive_minimum and value == low)
        ):
            bound = f"> {low}" if option.exclusive_minimum else f">= {low}"
            raise UsageError(f"{where} must be {bound}. Received: {value!r}")
        if high is not None and value > high:
            raise UsageError(f"{where} must be <= {high}. Received: {value!r}")


def read_config(path, command):
    """Reads a TOML config file into validated option values."""
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise UsageError(f"Config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"Config file {path} is not valid TOML: {error}") from None
    written_for = raw.pop("command", command)
    if written_for != command:
        raise UsageError(
            f"{path} is a config for `kdtrain {written_for}`, not "
            f"`kdtrain {command}`."
        )
    known = {o.key: o for o in options_for(command)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise UsageError(
                f"Unknown key {key!r} in {path}.{_closest(key, list(known))} "
                f"Valid keys for `kdtrain {command}`: {', '.join(known)}."
            )
        values[key] = _convert(known[key], value, path)
    return values


def parse(argv):
    """Parses the command line into (command, settings, flags given).

    Settings are the defaults, overridden by the config file, overridden by
    the flags.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        raise UsageError("Name a command: ban, distill, evaluate or report.")
    if unknown:
        flags = []
        if args.command in ("ban", "distill"):
            flags = ["--config", "--dry-run"] + [
                o.flag for o in options_for(args.command)
            ]
        word = unknown[0].split("=")[0]
        raise UsageError(
            f"Unknown argument {unknown[0]!r} for `kdtrain {args.command}`."
            f"{_closest(word, flags)}"
            + (f" Valid options: {', '.join(flags)}." if flags else "")
        )
    if args.command in ("evaluate", "report"):
        return args.command, {"directory": args.directory}, {}
    settings = {o.key: o.default for o in options_for(args.command)}
    if getattr(args, "config", None):
        settings.update(read_config(args.config, args.command))
    given = {}
    for option in options_for(args.command):
        if hasattr(args, option.key):
            given[option.key] = _convert(
                option, getattr(args, option.key), "flag"
            )
    settings.update(given)
    settings["dry_run"] = getattr(args, "dry_run", False)
    _check_combinations(args.command, settings)
    return args.command, settings, given


def _check_combinations(command, settings):
    if settings["dataset"] == "image_folder" and not settings["data_dir"]:
        raise UsageError(
            "--dataset image_folder needs --data-dir: the folder of class "
            "sub-folders (or of train/ and test/ folders)."
        )
    if settings["loss"] in ("logits_mse", "none") and (
        settings["temperature"] is not None
    ):
        raise UsageError(
            f"--loss {settings['loss']} has no temperature; drop --temperature."
        )
    if settings["loss"] == "none" and not settings["attention_transfer"]:
        raise UsageError(
            "--loss none switches the output distillation off; it needs a "
            "feature loss such as --attention-transfer group_1,group_2."
        )
    if settings["directory"] is None:
        settings["directory"] = os.path.join(
            "runs", f"{command}-{settings['dataset']}-{settings['model']}"
        )


# Running ------------------------------------------------------------------


def main(argv=None):
    """Runs the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, settings, _ = parse(argv)
    except UsageError as error:
        print(f"kdtrain: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from kdtrain import commands  # TensorFlow loads only past parsing

    return commands.run(command, settings, argv)


def entry_point():
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
