import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

# The only deadline a test may set on a subprocess: far above the normal
# time (seconds to a few minutes), so that only a hung process reaches it,
# never a slow or busy machine.
HANG_GUARD = 3600


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: 1797 8x8 images flattened to 64 features."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def mlp(hidden=16, classes=10, activation=None, inputs=64, seed=0):
    """A small Dense classifier; `activation` is the head's activation.

    `seed` seeds its weights; None leaves the random state alone (a chain's
    `build_model`, which the runner seeds itself).
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(classes, activation=activation),
        ]
    )


@pytest.fixture(scope="session")
def trained_teacher(digits):
    """A softmax-headed teacher trained on digits to ~95% accuracy."""
    x, y = digits
    teacher = mlp(64, activation="softmax", seed=1)
    teacher.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    teacher.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return teacher


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory):
    """A finished `kdtrain ban` run on digits, as small as a run gets:
    WRN-10-1, a teacher and one generation of one epoch on 200 images.

    Tests that change its files work on a copy.
    """
    directory = tmp_path_factory.mktemp("tiny") / "run"
    process = subprocess.run(
        [sys.executable, "-m", "kdtrain", "ban", "--model", "wrn-10-1",
         "--generations", "1", "--epochs", "1", "--train-size", "200",
         "--test-size", "100", "--no-progress", "--no-tensorboard",
         "--directory", str(directory)],
        capture_output=True, text=True, timeout=HANG_GUARD,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return directory


def tensorboard_events(path):
    """The events of a TensorBoard run folder, tensors included."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return accumulator


# Runs the command line in a fresh process and reports whether it loaded
# TensorFlow (or Keras) on the way.
_TF_PROBE = (
    "import sys\n"
    "from kdtrain.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('CODE', code)\n"
    "print('TF', 'tensorflow' in sys.modules or 'keras' in sys.modules)\n"
)


def run_without_tensorflow(argv, cwd=None):
    """`kdtrain ARGV` in a fresh process.

    Returns:
        `(exit code, whether TensorFlow or Keras loaded, stdout, stderr)`.
    """
    import subprocess
    import sys

    process = subprocess.run(
        [sys.executable, "-c", _TF_PROBE, *argv], cwd=cwd, text=True,
        capture_output=True, timeout=HANG_GUARD,
    )
    lines = process.stdout.splitlines()
    code = int(next(line for line in lines if line.startswith("CODE"))[5:])
    loaded = next(line for line in lines if line.startswith("TF")) == "TF True"
    return code, loaded, process.stdout, process.stderr
