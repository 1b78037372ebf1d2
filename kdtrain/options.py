"""The command line's options: flags, config files, settings, usage errors.

Everything here runs before TensorFlow is imported: parsing and checking a
command line answers at once. `parse` returns the command and a frozen
`Settings` (defaults, overridden by the config file, overridden by flags).

Exit codes: 0 done; 2 bad usage or configuration; 1 a failure during
training; 130 interrupted (finished generations are kept).
"""

import argparse
import dataclasses
import difflib
import math
import os
import re
import sys
import tomllib

from kdtrain import __version__

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
    item: type = None  # for type list: the type of each element

    @property
    def flag(self):
        return "--" + self.key.replace("_", "-")


_BOTH = ("ban", "distill")
_ALL = ("ban", "distill", "sweep")
# What `kdtrain sweep` takes as comma-separated lists: its grid.
SWEPT = ("loss", "temperature", "ground_truth_weight")
# `ban` options that a sweep (one student per grid point) has no use for.
_NOT_IN_SWEEP = ("generations", "teach_from", "retrain_from",
                 "distill_ensemble")

# Every setting: a --flag and a config file key.
OPTIONS = (
    # Data
    Option("dataset", str, "digits", "dataset name", _BOTH,
           choices=("digits", "fashion_mnist", "cifar10", "cifar100",
                    "image_folder")),
    Option("data_dir", str, None, "folder of the dataset's files (the "
           "class folders' root for image_folder)", _BOTH, optional=True),
    Option("image_size", int, None, "resize image_folder images to this "
           "square size", _BOTH, minimum=8, optional=True),
    Option("num_classes", int, None, "classes of an image_folder dataset, "
           "for --dry-run without the files", _BOTH, minimum=2,
           optional=True),
    Option("batch_size", int, 32, "batch size", _BOTH, minimum=1),
    Option("validation_split", float, 0.1, "fraction of the training data "
           "held out for validation (when the dataset has no own split)",
           _BOTH, minimum=0.0, maximum=0.9),
    Option("train_size", int, None, "use this many training images "
           "(a fixed random subset)", _BOTH, minimum=1, optional=True),
    Option("test_size", int, None, "use this many test images",
           _BOTH, minimum=1, optional=True),
    Option("augment", str, "none", "augmentation preset", _BOTH,
           choices=("none", "cifar", "mnist", "skin_cancer")),
    Option("scaling", str, "rescale", "pixel scaling", _BOTH,
           choices=("rescale", "normalize", "none")),
    # Models
    Option("output", str, "logits", "the models' head: logits, or a "
           "softmax / sigmoid (one unit, binary _BOTH) on top", _BOTH,
           choices=("logits", "softmax", "sigmoid")),
    Option("model", str, "wrn-16-1", "architecture of the generations "
           "(ban) or of the student (distill): wrn-<depth>-<width> or a "
           "keras.applications name", _BOTH),
    Option("dropout", float, 0.0, "dropout inside Wide ResNet blocks",
           _BOTH, minimum=0.0, maximum=0.9),
    Option("teacher_model", str, "mobilenet_v2", "architecture of the "
           "teacher trained first", ("distill",)),
    Option("teacher", str, None, "a trained teacher .keras file "
           "(skips training a teacher)", _BOTH, optional=True),
    # Training
    Option("generations", int, 3, "Born-Again generations after the "
           "teacher", ("ban",), minimum=1),
    Option("epochs", int, 10, "epochs per generation", _BOTH, minimum=1),
    Option("teacher_epochs", int, None, "epochs of the teacher (default: "
           "--epochs)", _BOTH, minimum=1, optional=True),
    Option("loss", str, "soft_targets", "distillation loss on the "
           "outputs (none: only feature losses and the labels)", _BOTH,
           choices=("soft_targets", "kl", "logits_mse", "cwtm", "dkpp",
                    "dkd", "dist", "nkd", "none")),
    Option("temperature", float, None, "softening temperature of the "
           "loss (default: the loss's own)", _BOTH, minimum=0.0,
           exclusive_minimum=True, optional=True),
    Option("standardize_logits", bool, False, "z-score each sample's "
           "logits before softening them (logit standardization; --loss "
           "kl or soft_targets)", _BOTH),
    Option("ground_truth_weight", float, 0.0, "w in (1-w)*distillation "
           "+ w*crossentropy", _BOTH, minimum=0.0, maximum=1.0),
    Option("attention_transfer", str, None, "comma-separated layers "
           "whose attention maps the student matches (e.g. "
           "group_1,group_2,group_3; student:teacher for different "
           "names)", _BOTH, optional=True),
    Option("attention_weight", float, 1000.0, "weight of the attention "
           "transfer loss", _BOTH, minimum=0.0, exclusive_minimum=True),
    Option("teach_from", str, "previous", "who teaches each generation",
           ("ban",), choices=("previous", "teacher")),
    Option("distill_ensemble", bool, False, "end the chain with one more "
           "student distilled from the ensemble of generations 1..N: the "
           "ensemble's accuracy at the cost of one model (column "
           "Ensemble-distilled, folder gen-ensemble)", ("ban",)),
    Option("optimizer", str, "adam", "Keras optimizer name", _BOTH),
    Option("learning_rate", float, None, "learning rate (default: the "
           "optimizer's own)", _BOTH, minimum=0.0, exclusive_minimum=True,
           optional=True),
    Option("early_stopping_patience", int, None, "stop a generation after "
           "this many epochs without improvement of the validation loss, "
           "restoring its best weights", _BOTH, minimum=1, optional=True),
    Option("seed", int, 0, "random seed", _BOTH, minimum=0),
    Option("seeds", list, None, "run one chain per seed, e.g. 0,1,2, in "
           "DIRECTORY/seed-K, and summarize them: means, 95% confidence "
           "intervals, paired differences against the teacher", _ALL,
           minimum=0, optional=True, item=int),
    Option("cache_teacher", str, "auto", "compute each teacher's outputs "
           "once per generation instead of on every batch (auto: when "
           "the training data are not augmented)", _BOTH,
           choices=("auto", "on", "off")),
    Option("distribute", str, "none", "tf.distribute strategy: mirrored "
           "(the GPUs of one machine) or multi_worker (a cluster "
           "described by TF_CONFIG)", _BOTH,
           choices=("none", "mirrored", "multi_worker")),
    Option("threads", int, None, "TensorFlow's threads per op (default: "
           "half the CPU cores, at least 1; the other half feed the "
           "tf.data pipeline and the training loop)", _BOTH, minimum=1,
           optional=True),
    Option("deterministic", bool, False, "make a resumed run give exactly "
           "the uninterrupted run's results (op determinism; epoch order "
           "and random draws from seed, generation and epoch)", _BOTH),
    # Output
    Option("directory", str, None, "where checkpoints, logs and results "
           "go (default: runs/<command>-<dataset>-<model>)", _BOTH,
           optional=True),
    Option("overwrite", bool, False, "replace a run of another "
           "configuration in --directory (removes only kdtrain's own "
           "files there)", _BOTH),
    Option("retrain_from", int, None, "discard generation K and every "
           "later one of the run in --directory and train them again",
           _BOTH, minimum=0, optional=True),
    Option("tensorboard", bool, True, "write TensorBoard logs", _BOTH),
    Option("progress", bool, True, "show tqdm progress bars "
           "(--no-progress: one line per epoch)", _BOTH),
    # kdtrain evaluate
    Option("tradeoff", bool, True, "measure each model's parameters, size, "
           "MACs, CPU latency and throughput into tradeoff.json and print "
           "them", ("evaluate",)),
)



def options_for(command):
    """The options of `command`; a sweep takes `ban`'s but the chain's."""
    if command == "sweep":
        return [o for o in OPTIONS if ("ban" in o.commands or "sweep" in
                o.commands) and o.key not in _NOT_IN_SWEEP]
    return [o for o in OPTIONS if command in o.commands]


def is_list(command, option):
    """Whether `option` of `command` takes a comma-separated list."""
    return option.type is list or (command == "sweep" and option.key in
                                    SWEPT)


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
    if default is not None and "(default:" not in text:
        text = f"{text} (default: {default})"
    return text.replace("%", "%%")  # argparse %-formats help texts


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kdtrain",
        description="Knowledge distillation and Born-Again Networks for "
        "Keras. Every option can also be set in a TOML file (--config), "
        "under the option's name with underscores; flags override the file.",
    )
    parser.add_argument("--version", action="version",
                        version=f"kdtrain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    descriptions = {
        "ban": "Train a teacher, then Born-Again generations, then "
        "ensembles; print the table.",
        "distill": "Distill one teacher into a student of another "
        "architecture.",
        "sweep": "Train one teacher, then one student per grid point of "
        "--loss x --temperature x --ground-truth-weight (comma-separated "
        "lists), all from that teacher; print the grid's table.",
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
                metavar = option.key.upper()
                if is_list(command, option):
                    metavar += ",..."
                sub.add_argument(option.flag, dest=option.key, type=str,
                                 metavar=metavar, help=_help_text(option))
    for command, description in (
        ("evaluate", "Evaluate every model and ensemble of a run on its test "
         "split; print the table, and what each model costs."),
        ("report", "Write the run's table as Markdown and a PNG plot of "
         "accuracy and loss per generation, or a study's intervals, or a "
         "sweep's heatmap (needs matplotlib)."),
    ):
        sub = subparsers.add_parser(command, help=description,
                                    description=description,
                                    argument_default=argparse.SUPPRESS)
        sub.add_argument("directory", help="the run's directory")
        for option in options_for(command):  # bool flags only
            sub.add_argument(option.flag, dest=option.key,
                             action=argparse.BooleanOptionalAction,
                             help=_help_text(option))
    from kdtrain import run_export  # no TensorFlow

    run_export.add_parser(subparsers)
    return parser


def _convert_list(option, value, source):
    """A comma-separated flag or a TOML list as a tuple of converted items.

    Each item is checked as the option's single value would be.
    """
    where = option.flag if source == "flag" else f"{option.key!r} in {source}"
    if value is None:
        return None
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items or any(item == "" for item in items):
        raise UsageError(f"{where} takes a comma-separated list, e.g. "
                         f"0,1,2. Received: {value!r}")
    single = dataclasses.replace(option, type=option.item or option.type,
                                 optional=option.item is None and
                                 option.optional)
    try:
        converted = tuple(_convert(single, item, source) for item in items)
    except UsageError as error:
        raise UsageError(f"{error} (in {where} {value!r})") from None
    if len(set(converted)) != len(converted):
        raise UsageError(f"{where} lists a value twice. Received: {value!r}")
    return converted


def _convert(option, value, source, listed=False):
    """Converts a flag string or TOML value to the option's type."""
    if listed or option.type is list:
        return _convert_list(option, value, source)
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
        values[key] = _convert(known[key], value, path,
                               is_list(command, known[key]))
    return values


# Settings ---------------------------------------------------------------------

# Settings that name files: recorded as absolute paths.
_PATHS = ("directory", "data_dir", "teacher")

# Settings that change how a run is watched or where it goes, not what it
# computes: a resumed run may change them.
NOT_IDENTITY = ("directory", "overwrite", "retrain_from", "tensorboard",
                "progress", "threads", "seeds")


def _absolute(key, value):
    return os.path.abspath(value) if key in _PATHS and value else value


def _settings_class():
    fields = [("command", str, dataclasses.field(default="ban")),
              ("dry_run", bool, dataclasses.field(default=False))]
    fields += [(o.key, object, dataclasses.field(default=o.default))
               for o in OPTIONS]
    namespace = {
        "__doc__": "A command's settings: one field per option (`OPTIONS`), "
                   "plus `command` and `dry_run`. Frozen: derive changed "
                   "settings with `dataclasses.replace`.",
        "identity": lambda self: {
            o.key: _absolute(o.key, getattr(self, o.key))
            for o in options_for(self.command) if o.key not in NOT_IDENTITY
        },
    }
    return dataclasses.make_dataclass("Settings", fields, frozen=True,
                                      namespace=namespace)


Settings = _settings_class()


def parse(argv):
    """Parses the command line into `(command, Settings)`.

    Settings are the defaults, overridden by the config file, overridden by
    the flags.

    Raises:
        UsageError: Unknown flags or keys, bad values or combinations.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        raise UsageError(
            "Name a command: ban, distill, sweep, evaluate, report or "
            "export.")
    if args.command == "export":
        from kdtrain import run_export

        return args.command, run_export.settings_from(args, unknown)
    if unknown:
        flags = []
        if args.command in ("ban", "distill", "sweep"):
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
        return args.command, Settings(
            command=args.command, directory=args.directory,
            **{o.key: getattr(args, o.key) for o in options_for(args.command)
               if hasattr(args, o.key)})
    values = {o.key: o.default for o in options_for(args.command)}
    if getattr(args, "config", None):
        values.update(read_config(args.config, args.command))
    for option in options_for(args.command):
        if hasattr(args, option.key):
            values[option.key] = _convert(
                option, getattr(args, option.key), "flag",
                is_list(args.command, option),
            )
    if args.command == "sweep":
        for key in SWEPT:  # one value is a grid of one
            if not isinstance(values[key], tuple):
                values[key] = (values[key],)
    _check_combinations(args.command, values)
    return args.command, Settings(command=args.command,
                                  dry_run=getattr(args, "dry_run", False),
                                  **values)


def _check_combinations(command, values):
    if command == "sweep":
        for point in grid(values):
            try:
                _check_combination(command, dict(values, **point))
            except UsageError as error:
                flags = " ".join(f"--{k.replace('_', '-')} {v}"
                                 for k, v in point.items() if v is not None)
                raise UsageError(f"{error} The grid has the point {flags}; "
                                 "sweep such values separately.") from None
    else:
        _check_combination(command, values)
    if values.get("seeds") is not None and values["seed"] != 0:
        raise UsageError(
            "--seeds gives each chain its own --seed: drop --seed "
            f"{values['seed']}."
        )
    if values.get("seeds") is not None and values.get("retrain_from") is not None:
        raise UsageError(
            "--retrain-from applies to one run: retrain a seed's run in its "
            "own directory (kdtrain ban --config DIRECTORY/seed-K/config.toml "
            "--retrain-from K), then run the study again to summarize it."
        )
    if values["directory"] is None:
        study = "-study" if values.get("seeds") and command != "sweep" else ""
        values["directory"] = os.path.join(
            "runs", f"{command}-{values['dataset']}-{values['model']}{study}"
        )


def grid(values):
    """The grid points of a sweep's settings, in order: dicts of `SWEPT`."""
    from kdtrain.sweep import make_grid  # noqa: PLC0415

    try:
        return make_grid(*(values[key] for key in SWEPT))
    except ValueError as error:
        flags = ", ".join("--" + k.replace("_", "-") for k in SWEPT)
        raise UsageError(f"{flags}: {error}") from None


def _check_combination(command, values):
    if values["dataset"] == "image_folder" and not values["data_dir"]:
        raise UsageError(
            "--dataset image_folder needs --data-dir: the folder of class "
            "sub-folders (or of train/ and test/ folders)."
        )
    if values["loss"] in ("logits_mse", "none") and (
        values["temperature"] is not None
    ):
        raise UsageError(
            f"--loss {values['loss']} has no temperature; drop --temperature."
        )
    if values.get("standardize_logits") and values["loss"] not in (
        "kl", "soft_targets"
    ):
        raise UsageError(
            "--standardize-logits applies to --loss kl or soft_targets, not "
            f"to --loss {values['loss']}."
        )
    if values["loss"] == "none" and not values["attention_transfer"]:
        raise UsageError(
            "--loss none switches the output distillation off; it needs a "
            "feature loss such as --attention-transfer group_1,group_2."
        )
    if values.get("distill_ensemble"):
        _check_distill_ensemble(values)
    first = 1 if values["teacher"] else 0
    last = values.get("generations", 1)
    ensemble = ""
    if values.get("distill_ensemble"):
        last += 1
        ensemble = f" ({last}: the student distilled from the ensemble)"
    if values.get("retrain_from") is not None and not (
        first <= values["retrain_from"] <= last
    ):
        raise UsageError(
            f"--retrain-from must name a generation from {first} to {last}"
            f"{ensemble}. Received: {values['retrain_from']}"
        )


def _check_distill_ensemble(values):
    if values["generations"] < 2:
        raise UsageError(
            "--distill-ensemble distills the ensemble of generations 1..N "
            "into one more student; with --generations 1 that ensemble is "
            "generation 1 alone. Pass --generations 2 or more."
        )
    if values["attention_transfer"]:
        raise UsageError(
            "--distill-ensemble teaches with the ensemble's averaged "
            "probabilities, which has no layers for --attention-transfer; "
            "drop one of them."
        )


# The settings file of a run -------------------------------------------------


def default_threads():
    """`--threads` when not given: half the CPU cores this process may use.

    TensorFlow's own default, one thread per core for each op, leaves the
    input pipeline and the Python loop to compete with ops whose threads
    spin while they wait; on small models that costs CPU time and gains no
    speed (measured: README, Performance).
    """
    return max(1, usable_cores() // 2)


def usable_cores():
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_flags(message):
    """`message` in the command line's words: a setting's Python spelling
    (`data_dir=...`, `overwrite=True`, `cache_teacher=False`) as its flag.

    Example:

    >>> in_flags("Pass data_dir= a folder, or overwrite=True.")
    'Pass --data-dir a folder, or --overwrite.'
    """
    for option in OPTIONS:
        key = re.escape(option.key)
        if option.type is bool:
            message = re.sub(rf"`?\b{key}=True\b`?", option.flag, message)
            message = re.sub(rf"`?\b{key}=False\b`?",
                             "--no-" + option.flag[2:], message)
        elif option.choices and "on" in option.choices:
            message = re.sub(rf"`?\b{key}=True\b`?", f"{option.flag} on",
                             message)
            message = re.sub(rf"`?\b{key}=False\b`?", f"{option.flag} off",
                             message)
        message = re.sub(rf"`{key}=([^`]*)`", option.flag + r" \1", message)
        message = re.sub(rf"\b{key}=\s?", option.flag + " ", message)
    return message


def config_text(settings):
    """`settings` as the TOML text of `DIRECTORY/config.toml`."""
    lines = [f"# kdtrain {settings.command}: the settings of this run.",
             f"# Rerun with: kdtrain {settings.command} --config "
             f"{os.path.abspath(os.path.join(settings.directory, CONFIG_FILE))}",
             f"command = {_toml_value(settings.command)}"]
    for option in options_for(settings.command):
        value = getattr(settings, option.key)
        if value is None or option.key in ("overwrite", "retrain_from") or (
            option.key == "seed" and settings.seeds is not None
        ) or (isinstance(value, tuple) and all(v is None for v in value)):
            continue
        value = _absolute(option.key, value)  # read from anywhere
        lines.append(f"{option.key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value):
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_run_config(directory):
    """The `Settings` a run recorded in `DIRECTORY/config.toml`.

    Raises:
        UsageError: No such file, or a damaged one (naming it).
    """
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no such directory.")
    if not os.path.exists(path):
        raise UsageError(
            f"{directory} holds no kdtrain run (no {CONFIG_FILE}). Run "
            "`kdtrain ban --directory ...` first."
        )
    try:
        with open(path, "rb") as file:
            command = tomllib.load(file).get("command", "ban")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(
            f"{path} is damaged: it is not valid TOML ({error})."
        ) from None
    values = {o.key: o.default for o in options_for(command)}
    values.update(read_config(path, command))
    values["directory"] = os.fspath(directory)
    return Settings(command=command, **values)
