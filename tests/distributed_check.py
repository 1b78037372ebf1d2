"""Trains the same distiller on one device and under a strategy; prints JSON.

Run as a script (a fresh process), because logical devices must be set up
before TensorFlow starts: `python distributed_check.py mirrored`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPLICAS = 2


def split_cpu(count):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 4, size=64)
    weights = rng.uniform(0.5, 1.5, size=64).astype("float32")
    return x, y, weights


def models():
    import keras

    rng = np.random.default_rng(1)

    def dense_net(hidden, activation):
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(4, activation=activation),
            ]
        )
        model.set_weights(
            [rng.normal(scale=0.5, size=w.shape).astype("float32")
             for w in model.get_weights()]
        )
        return model

    return dense_net(16, "softmax"), dense_net(12, None)


def train():
    import keras

    import kdtrain

    teacher, student = models()
    initial = [w.tolist() for w in student.get_weights()]
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        distillation_loss=kdtrain.losses.KLDivergence(2.0),
        ground_truth_weight=0.3,
        metrics=["accuracy"],
    )
    x, y, weights = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
    history = distiller.fit(dataset, epochs=3, verbose=0)
    return {
        "history": history.history,
        "weights": [w.tolist() for w in student.get_weights()],
    }, initial


def main(mode):
    if mode != "mirrored":
        raise SystemExit(f"unknown mode {mode!r}")
    split_cpu(REPLICAS)
    single, initial = train()
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    with strategy.scope():
        distributed, _ = train()
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "single": single,
                "distributed": distributed,
                "initial": initial,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
