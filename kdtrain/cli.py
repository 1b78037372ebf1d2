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

import os
import sys

from kdtrain.options import EXIT_FAILURE  # noqa: F401 - the exit codes
from kdtrain.options import EXIT_INTERRUPTED  # noqa: F401
from kdtrain.options import EXIT_OK  # noqa: F401
from kdtrain.options import EXIT_USAGE
from kdtrain.options import UsageError
from kdtrain.options import parse


def main(argv=None):
    """Runs the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, settings = parse(argv)
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
