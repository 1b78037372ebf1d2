"""`kdtrain` on a tiny model, run as a subprocess by the crash tests.

Usage: python fault_script.py KDTRAIN-ARGUMENTS...

Registers `tiny-mlp` (a one-hidden-layer classifier) and `tiny-mlp-dropout`
and runs the command line with the arguments given. The tests stop it at a fault point
(`KDTRAIN_FAULT`, see `kdtrain.faults`) and run it again.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from kdtrain import models  # noqa: E402
from kdtrain.cli import main  # noqa: E402


def tiny_mlp(*, num_classes, input_shape, output="logits", dropout=0.0):
    head = {"logits": None, "softmax": "softmax", "sigmoid": "sigmoid"}
    layers = [keras.Input(input_shape), keras.layers.Flatten(),
              keras.layers.Dense(24, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(
        1 if output == "sigmoid" else num_classes, activation=head[output]
    ))
    return keras.Sequential(layers)


def tiny_mlp_with_dropout(**kwargs):
    """`tiny_mlp` with dropout: random draws inside the model too."""
    return tiny_mlp(**kwargs, dropout=0.3)


if __name__ == "__main__":
    models.register("tiny-mlp", tiny_mlp)
    models.register("tiny-mlp-dropout", tiny_mlp_with_dropout)
    sys.exit(main(sys.argv[1:]))
