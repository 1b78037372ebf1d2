"""`kdtrain export`: a run's model, exported and checked in its runtime.

    kdtrain export runs/ban-digits-wrn-16-1 --model best --format onnx \\
        --output student.onnx

`export_run` is the Python equivalent. Everything that can be refused is
refused before TensorFlow loads (`check`): the format, the model's name, an
`--output` that is not an earlier export of that format, a missing package
of the `export` extra. The export is written beside `--output`, run in its
runtime on the run's test split, and renamed into place only when a float
export agrees with Keras within 1e-4 (an int8 export reports its accuracy
drop instead).
"""

import argparse
import dataclasses
import difflib
import os

from kdtrain import export
from kdtrain.options import EXIT_FAILURE
from kdtrain.options import EXIT_OK
from kdtrain.options import UsageError
from kdtrain.run_models import RunModels

CALIBRATION_SAMPLES = 256
DESCRIPTION = ("Export a model of a finished run as a SavedModel, LiteRT or "
               "ONNX file, and check it in its runtime on the run's test "
               "split.")
_FLAGS = ("--model", "--format", "--output", "--outputs", "--int8",
          "--calibration-samples", "--overwrite", "--threads")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """The settings of `kdtrain export` (see `add_parser` for each)."""

    directory: str
    output: str
    model: str = "best"
    format: str = "saved_model"
    outputs: str = "logits"
    int8: bool = False
    calibration_samples: int = CALIBRATION_SAMPLES
    overwrite: bool = False
    threads: int = None
    command: str = "export"
    distribute: str = "none"
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_run` exported: the model's name, label, why it was
    chosen, the path, what its input takes, and the
    `kdtrain.parity.Parity` of the export."""

    name: str
    label: str
    reason: str
    path: str
    input: str
    parity: object


def add_parser(subparsers):
    """Adds the `export` subcommand to the command line's subparsers."""
    sub = subparsers.add_parser("export", help=DESCRIPTION,
                                description=DESCRIPTION,
                                argument_default=argparse.SUPPRESS)
    sub.add_argument("directory", help="the run's directory")
    sub.add_argument("--model", metavar="NAME", help="teacher, BAN-K, "
                     "best (the student with the highest validation "
                     "accuracy), ensemble or ensemble-with-teacher "
                     "(default: best)")
    sub.add_argument("--format", metavar="FORMAT", help="saved_model, "
                     "litert or onnx (default: saved_model)")
    sub.add_argument("--output", metavar="PATH", help="where the export "
                     "goes: a folder (saved_model), a .tflite file (litert) "
                     "or an .onnx file (onnx); required")
    sub.add_argument("--outputs", metavar="KIND", help="what the export "
                     "returns: logits or probabilities (default: logits)")
    sub.add_argument("--int8", action="store_true", help="post-training "
                     "int8 quantization (--format litert), calibrated on "
                     "the run's training data")
    sub.add_argument("--calibration-samples", metavar="N", help="training "
                     "samples that calibrate --int8 (default: "
                     f"{CALIBRATION_SAMPLES})")
    sub.add_argument("--overwrite", action="store_true", help="replace an "
                     "earlier export of the format at --output (nothing "
                     "else is ever replaced)")
    sub.add_argument("--threads", metavar="THREADS", help="TensorFlow's "
                     "threads per op (default: half the CPU cores)")


def _choice(flag, value, choices):
    if value not in choices:
        match = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        hint = f" Did you mean {match[0]!r}?" if match else ""
        raise UsageError(f"{flag} must be one of {', '.join(choices)}. "
                         f"Received: {value!r}.{hint}")
    return value


def _positive(flag, value):
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(f"{flag} must be an int >= 1. Received: {value!r}")
    return number


def settings_from(args, unknown=()):
    """The `ExportSettings` of parsed arguments, checked.

    Raises:
        UsageError: Unknown flags, a bad value or no `--output`.
    """
    if unknown:
        word = unknown[0].split("=")[0]
        match = difflib.get_close_matches(word, _FLAGS, n=1, cutoff=0.5)
        raise UsageError(
            f"Unknown argument {unknown[0]!r} for `kdtrain export`."
            + (f" Did you mean {match[0]!r}?" if match else "")
            + f" Valid options: {', '.join(_FLAGS)}.")
    values = {field.name: getattr(args, field.name)
              for field in dataclasses.fields(ExportSettings)
              if hasattr(args, field.name) and field.name != "command"}
    if "output" not in values:
        raise UsageError("kdtrain export needs --output: where the export "
                         "goes, e.g. --format onnx --output student.onnx.")
    _choice("--format", values.get("format", "saved_model"), export.FORMATS)
    _choice("--outputs", values.get("outputs", "logits"), export.OUTPUTS)
    for key in ("calibration_samples", "threads"):
        if key in values:
            values[key] = _positive("--" + key.replace("_", "-"),
                                    values[key])
    if "calibration_samples" in values and not values.get("int8"):
        raise UsageError("--calibration-samples sets the images that "
                         "calibrate an --int8 export: add --int8 or drop it.")
    return ExportSettings(**values)


def check(settings):
    """Refuses, before TensorFlow loads, what can be refused without it.

    Returns:
        `(models, name, reason)`: the run's `RunModels`, the table name of
        the model to export and why it was chosen (for `best`).

    Raises:
        UsageError: Naming the flag and the value.
    """
    output = os.path.normpath(os.fspath(settings.output))
    format = settings.format
    if not os.path.isdir(settings.directory):
        raise UsageError(f"{settings.directory}: no such directory.")
    models = RunModels(settings.directory)
    name, reason = models.resolve(settings.model)
    if settings.int8 and format != "litert":
        raise UsageError("--int8 quantizes LiteRT exports: use it with "
                         f"--format litert, not --format {format}.")
    problem = export.path_problem(output, format)
    if problem:
        raise UsageError(f"--output {output}: {problem} (--format {format}).")
    if os.path.lexists(output):
        if not settings.overwrite:
            raise UsageError(f"--output {output} exists. Pass --overwrite to "
                             "replace an earlier export there.")
        if not export.is_export(output, format):
            raise UsageError(
                f"--output {output} exists and is not "
                f"{export.A_FORMAT[format]} export: kdtrain replaces "
                "only its own exports. Nothing was changed; choose another "
                "--output.")
    try:
        export.require(format, argument=f"--format {format}")
    except export.MissingExtra as error:
        raise UsageError(str(error)) from None
    return models, name, reason


def _calibration_samples(dataset, count):
    import numpy as np

    samples, total = [], 0
    for x, *_ in dataset.as_numpy_iterator():
        samples.append(x)
        total += len(x)
        if total >= count:
            break
    return np.concatenate(samples)[:count]


def export_run(directory, output, model="best", format="saved_model",
               outputs="logits", int8=False,
               calibration_samples=CALIBRATION_SAMPLES, overwrite=False):
    """Exports a model of a finished run, checked on its test split.

    The Python equivalent of `kdtrain export`. The export is written beside
    `output`, run in its runtime on the run's test split against the Keras
    model, and renamed to `output` only when it passes (a float export
    within `kdtrain.export.FLOAT_TOLERANCE`; int8 always, reporting its
    accuracy drop).

    Args:
        directory: The finished run's directory.
        output: A folder (`"saved_model"`), `.tflite` or `.onnx` file.
        model: `"best"` (the student with the highest validation
            accuracy), `"teacher"`, `"BAN-K"`, `"ensemble"`,
            `"ensemble-with-teacher"`, or any name of the run's table.
        format: `"saved_model"`, `"litert"` or `"onnx"`.
        outputs: `"logits"` or `"probabilities"`.
        int8: Post-training int8 quantization (LiteRT), calibrated on
            `calibration_samples` samples of the run's training data.
        calibration_samples: See `int8`.
        overwrite: Whether an earlier export of `format` at `output` may be
            replaced.

    Returns:
        An `ExportResult`; `result.parity.passed` says whether `output` was
        written.

    Raises:
        UsageError: A bad argument, naming it as the command line does.
        MissingExtra: A package of the `export` extra is missing.

    Example:

    >>> result = export_run("runs/ban-digits-wrn-16-1", "student.tflite",
    ...                     format="litert")
    >>> print(result.parity.describe())
    """
    from kdtrain import data as data_module
    from kdtrain.chain.lock import DirectoryLock
    from kdtrain.commands import data_options
    from kdtrain.parity import check_parity
    from kdtrain.pipelines import materialize

    settings = ExportSettings(
        directory=os.fspath(directory),
        output=os.path.normpath(os.fspath(output)),
        model=model, format=_choice("--format", format, export.FORMATS),
        outputs=_choice("--outputs", outputs, export.OUTPUTS), int8=int8,
        calibration_samples=calibration_samples, overwrite=overwrite)
    models, name, reason = check(settings)
    lock = DirectoryLock(models.path)
    lock.acquire(shared=True)
    try:
        keras_model, kind = models.load(name)
    finally:
        lock.release()
    saved = models.settings
    loaded = data_module.load(saved.dataset,
                              **dict(data_options(saved), augment=None))
    x, y, _, _ = materialize(loaded.test)
    representative = None
    if int8:
        representative = _calibration_samples(loaded.train,
                                              calibration_samples)
    try:
        with export.writing(settings.output, format) as temporary:
            export.export_model(
                keras_model, temporary, format=format, outputs=outputs,
                output_kind=kind, input_shape=loaded.info.input_shape,
                int8=int8, representative_data=representative)
            parity = check_parity(temporary, keras_model, x, y,
                                  format=format, outputs=outputs,
                                  output_kind=kind, int8=int8)
            if not parity.passed:
                raise _Discarded  # leaves `output` as it was
    except _Discarded:
        pass
    return ExportResult(name, models.label(name), reason, settings.output,
                        describe_input(loaded.info), parity)


class _Discarded(Exception):
    """An export that failed its parity check, never renamed into place."""


def describe_input(info):
    """What an export's input takes: the run's preprocessed images.

    Args:
        info: The run's `kdtrain.data.DatasetInfo`.
    """
    shape = ", ".join(["batch", *map(str, info.input_shape)])
    scaling = {
        "rescale": "pixel values divided by their maximum (to [0, 1])",
        "normalize": "pixel values divided by their maximum, then "
                     "standardized per channel: mean "
                     f"{_numbers(info.normalization_mean)}, standard "
                     f"deviation {_numbers(info.normalization_std)}",
        "none": "raw pixel values",
    }[info.scaling]
    return f'input "{export.INPUT_NAME}": float32 ({shape}), {scaling}'


def _numbers(values):
    return "(" + ", ".join(f"{v:.4g}" for v in values or ()) + ")"


def run(settings):
    """`kdtrain export`: exports, checks and prints; returns the exit code."""
    import sys

    result = export_run(
        settings.directory, settings.output, settings.model,
        settings.format, settings.outputs, settings.int8,
        settings.calibration_samples, settings.overwrite)
    if not result.parity.passed:
        print(result.parity.describe())
        print("kdtrain: error: the export differs from Keras by more than "
              f"{export.FLOAT_TOLERANCE:g}; nothing was written to "
              f"{settings.output}.", file=sys.stderr)
        return EXIT_FAILURE
    chosen = f" ({result.name}: {result.reason})" if result.reason else ""
    kind = export.FORMAT_NAMES[settings.format] + (
        " int8" if settings.int8 else "")
    print(f"Exported {result.label}{chosen} of {settings.directory} as "
          f"{kind} to {result.path}"
          f" ({_size(result.path) / 1e6:.2f} MB), returning "
          f"{settings.outputs}.")
    print(f"  {result.input}")
    print(result.parity.describe())
    return EXIT_OK


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)
