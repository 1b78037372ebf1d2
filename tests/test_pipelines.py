"""The runner's pipelines: an order per epoch, augmentation from seeds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdtrain
from kdtrain import pipelines


def batches(dataset):
    return [tuple(part.numpy() for part in batch) for batch in dataset]


def images():
    rng = np.random.default_rng(0)
    return rng.random((40, 12, 12, 1), dtype="float32"), np.arange(40)


def test_each_epoch_has_its_own_order_and_repeats_it():
    x, y = images()
    seed = tf.Variable([11, 0], dtype=tf.int64)
    dataset = pipelines.array_dataset(x, y, batch_size=16, epoch_seed=seed)
    first = batches(dataset)
    assert [len(b[1]) for b in first] == [16, 16, 8]
    order = np.concatenate([b[1] for b in first])
    assert sorted(order) == list(range(40)) and list(order) != sorted(order)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in first]),
                                  x[order])  # each sample with its label
    assert batches(dataset)[0][1].tolist() == first[0][1].tolist()
    seed.assign([11, 1])  # the next epoch
    assert batches(dataset)[0][1].tolist() != first[0][1].tolist()


def test_augmentation_is_a_function_of_the_epoch_seed_and_the_batch():
    x, y = images()
    flip = keras.layers.RandomFlip("horizontal")
    seed = tf.Variable([5, 0], dtype=tf.int64)
    dataset = pipelines.array_dataset(x, y, batch_size=40, shuffle=False,
                                      epoch_seed=seed, augmentation=flip)
    (augmented, labels), = batches(dataset)
    flipped = np.all(augmented == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(augmented == x, axis=(1, 2, 3))
    assert np.all(flipped | kept) and 5 < flipped.sum() < 35
    for _ in range(2):  # drawn again: the same images
        np.testing.assert_array_equal(batches(dataset)[0][0], augmented)
    seed.assign([5, 1])
    assert not np.array_equal(batches(dataset)[0][0], augmented)


def test_only_keras_image_layers_can_be_applied_from_seeds():
    assert pipelines.is_stateless_augmentation(
        kdtrain.data.augmentation("cifar")
    )
    assert not pipelines.is_stateless_augmentation(keras.layers.Dense(2))
    assert not pipelines.is_stateless_augmentation(lambda images: images)
    with pytest.raises(ValueError, match="epoch_seed"):
        pipelines.array_dataset(*images(), augmentation=keras.layers.RandomFlip())


def test_a_deterministic_chain_refuses_a_pipeline_that_augments_itself(
    tmp_path,
):
    x, y = images()
    noisy = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(
        lambda a, b: (a + tf.random.uniform(tf.shape(a)), b)
    )

    def build():
        return keras.Sequential([keras.Input((12, 12, 1)),
                                 keras.layers.Flatten(),
                                 keras.layers.Dense(40)])

    runner = kdtrain.GenerationRunner(
        build, generations=1, seed=0, deterministic=True,
        directory=tmp_path / "run", verbose=0,
    )
    with pytest.raises(ValueError, match="run\\(augmentation=...\\)"):
        runner.run(noisy)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="random image preprocessing"):
        runner.run((x, y), augmentation=keras.layers.Dense(2))
