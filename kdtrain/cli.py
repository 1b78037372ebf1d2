"""The `kdtrain` command: Born-Again chains and distillation, configured by
flags or a TOML file.

    kdtrain ban                          # digits, WRN-16-1, 3 generations
    kdtrain ban --config experiments/fashion_mnist_wrn16_1.toml
    kdtrain distill --teacher-model mobilenet_v2 --model wrn-16-4 ...
    kdtrain evaluate runs/ban-digits-wrn-16-1
    kdtrain report runs/ban-digits-wrn-16-1
    kdtrain export runs/ban-digits-wrn-16-1 --format onnx --output student.onnx

Exit codes: 0 done; 2 bad usage or configuration; 1 a failure during
training; 130 interrupted (finished generations are kept).
"""

import importlib.util
import os
import sys

from kdtrain.options import EXIT_FAILURE  # noqa: F401 - the exit codes
from kdtrain.options import EXIT_INTERRUPTED  # noqa: F401
from kdtrain import quick
from kdtrain.chain.errors import RunDirectoryError
from kdtrain.options import EXIT_OK
from kdtrain.options import EXIT_USAGE
from kdtrain.options import UsageError
from kdtrain.options import parse


def main(argv=None):
    """Runs the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, settings = parse(argv)
        quick.check(command, settings)
        if command == "report":  # reads files and draws: no TensorFlow
            return quick.report(settings)
        table = quick.finished_table(command, settings)
    except UsageError as error:
        print(f"kdtrain: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunDirectoryError as error:  # e.g. a run in use by another process
        print(f"kdtrain: error: {error.describe('cli')}", file=sys.stderr)
        return EXIT_USAGE
    if table is not None:  # A finished run: its table, without TensorFlow.
        print(table)
        again = os.path.join(settings.directory, "seed-K") if (
            getattr(settings, "seeds", None) is not None
        ) else settings.directory
        print(f"\nThe run in {settings.directory} has finished; its model "
              f"files match their records. `kdtrain evaluate {again}` "
              "evaluates them again.")
        return EXIT_OK
    if importlib.util.find_spec("tensorflow") is None:
        print("kdtrain: error: TensorFlow is not installed. Install kdtrain "
              "with the build for this machine: pip install -e \".[cpu]\" "
              "(no GPU) or pip install -e \".[gpu]\" (NVIDIA GPU).",
              file=sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from kdtrain import commands  # TensorFlow loads only past parsing

    return commands.run(command, settings, argv)


def entry_point():
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
