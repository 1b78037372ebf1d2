"""A two-generation chain on digits, run as a subprocess by the resume test.

Usage: python chain_script.py DIRECTORY LOG

Appends "GENERATION EPOCH" to LOG at each epoch's start. The test stops it
with a fault point (`KDTRAIN_FAULT`, see `kdtrain.faults`).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from conftest import mlp  # noqa: E402
from kdtrain.chain import GenerationRunner  # noqa: E402


class Spy(keras.callbacks.Callback):
    def __init__(self, generation, log):
        super().__init__()
        self.generation = generation
        self.log = log

    def on_epoch_begin(self, epoch, logs=None):
        with open(self.log, "a") as f:
            f.write(f"{self.generation} {epoch}\n")


def build_model():
    return mlp(seed=None)


def main(argv):
    directory, log = argv[0], argv[1]
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    runner = GenerationRunner(
        build_model,
        generations=2,
        optimizer=lambda: keras.optimizers.Adam(0.01),
        directory=directory,
        seed=0,
        progress=False,
        verbose=0,
    )
    result = runner.run(
        (x[:1400], y[:1400]),
        test_data=(x[1400:], y[1400:]),
        epochs=3,
        batch_size=64,
        callbacks=lambda generation: [Spy(generation, log)],
    )
    print(result.to_markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
