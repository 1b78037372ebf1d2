"""Training pipelines built from arrays, and what a `tf.data` pipeline does.

`array_dataset` gathers batches from in-memory arrays by index (optionally
with each sample's cached teacher logits, `pack_inputs`), in an order that
`indexed_batches` draws per epoch; `materialize` reads a finite dataset
into arrays; `is_randomized` and `is_shuffled` look into a dataset's graph.
"""

import keras
import numpy as np
import tensorflow as tf

INPUTS_KEY = "inputs"
LOGITS_KEY = "teacher_logits"


def pack_inputs(x, teacher_logits):
    """The inputs of a cached batch: `x` with its samples' teacher logits."""
    return {INPUTS_KEY: x, LOGITS_KEY: teacher_logits}


def unpack_inputs(x):
    """Splits inputs made by `pack_inputs`; returns `(x, logits or None)`."""
    if isinstance(x, dict) and set(x) == {INPUTS_KEY, LOGITS_KEY}:
        return x[INPUTS_KEY], x[LOGITS_KEY]
    return x, None


def num_samples(x):
    """The number of samples of an array or a structure of arrays."""
    return int(keras.tree.flatten(x)[0].shape[0])


def _gather(values, indices):
    """Rows `indices` of an array; memory-mapped arrays are read per batch."""
    if isinstance(values, np.memmap):
        rows = tf.numpy_function(
            lambda i: np.asarray(values[i]), [indices], tf.as_dtype(
                values.dtype
            ),
        )
        return tf.ensure_shape(rows, [None, *values.shape[1:]])
    return tf.gather(values, indices)


def _dataset_ops(dataset):
    """The op types of a dataset's graph, its map functions' included."""
    from tensorflow.core.framework import graph_pb2

    graph = graph_pb2.GraphDef.FromString(
        dataset._as_serialized_graph().numpy()
    )
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def is_randomized(dataset):
    """Whether a `tf.data.Dataset` draws random numbers for its elements.

    Random augmentation (Keras' random layers, `tf.image.random_*`,
    `tf.random.*`) puts random-number ops into the pipeline's graph; the
    shuffling of sample order does not count. A pipeline with such an op
    may change its samples every epoch, so its teacher outputs cannot be
    cached. (A fixed-seed random op counts too: the rule errs on the side
    of running the teacher.)

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        True if the pipeline holds a random-number op.
    """
    return any(
        "Random" in op and not op.endswith("Dataset")
        for op in _dataset_ops(dataset)
    )


def is_shuffled(dataset):
    """Whether a `tf.data.Dataset` shuffles its samples."""
    return any(op.startswith("Shuffle") for op in _dataset_ops(dataset))


def materialize(dataset):
    """One pass of a finite batched dataset as `(x, y, sample_weight)` arrays.

    Args:
        dataset: A finite `tf.data.Dataset` of `x`, `(x, y)` or
            `(x, y, sample_weight)` batches.

    Returns:
        `(x, y, sample_weight, batch_size)`: numpy arrays (None where the
        data have none) and the size of the first batch.
    """
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "The training dataset repeats forever, so its teacher outputs "
            "cannot be computed once. Remove the .repeat(), or pass "
            "cache_teacher=False."
        )
    batches = [
        keras.utils.unpack_x_y_sample_weight(element)
        for element in dataset.as_numpy_iterator()
    ]
    if not batches:
        raise ValueError("The training dataset is empty.")
    return concatenate_batches(batches)


def concatenate_batches(batches):
    """Unpacked `(x, y, sample_weight)` batches joined into arrays.

    Args:
        batches: A non-empty list of `(x, y, sample_weight)` batches (y and
            sample_weight may be None), arrays or tensors.

    Returns:
        `(x, y, sample_weight, batch_size)`: NumPy arrays (None where the
        batches have none) and the size of the first batch.
    """
    parts = []
    for position in range(3):
        if batches[0][position] is None:
            parts.append(None)
            continue
        parts.append(keras.tree.map_structure(
            lambda *values: np.concatenate([np.asarray(v) for v in values]),
            *[batch[position] for batch in batches],
        ))
    return (*parts, num_samples(batches[0][0]))


def array_batches(x, batch_size):
    """Consecutive batches of a structure of arrays, in order."""
    for start in range(0, num_samples(x), batch_size):
        yield keras.tree.map_structure(
            lambda a: a[start:start + batch_size], x
        )


def indexed_batches(count, batch_size, shuffle=True, seed=None,
                    epoch_seed=None):
    """A dataset of batches of sample indices, reshuffled every epoch.

    Args:
        count: The number of samples.
        batch_size: Indices per batch.
        shuffle: Whether each epoch visits the samples in a new order.
        seed: Optional shuffling seed (stateful shuffling).
        epoch_seed: Optional int64 `tf.Variable` of shape (2,); when given,
            each epoch's order is a stateless permutation drawn from its
            value when the epoch's iterator starts (see
            `kdtrain.chain.callbacks.EpochSeed`), so an epoch trained again
            sees the same order.
    """
    if shuffle and epoch_seed is not None:
        def permutation(_):
            noise = tf.random.stateless_uniform(
                [count], seed=epoch_seed.read_value()
            )
            return tf.data.Dataset.from_tensor_slices(
                tf.argsort(noise, stable=True)
            )

        indices = tf.data.Dataset.range(1).flat_map(permutation)
    else:
        indices = tf.data.Dataset.range(count)
        if shuffle:
            indices = indices.shuffle(
                count, seed=seed, reshuffle_each_iteration=True
            )
    batches = -(-count // batch_size)
    return indices.batch(batch_size).apply(
        tf.data.experimental.assert_cardinality(batches)
    )


class _BatchSeed(keras.random.SeedGenerator):
    """Seeds a layer's random draws from one batch's seed, statelessly.

    Keras' random preprocessing layers draw from a `SeedGenerator` whose
    state advances with every call, wherever the pipeline happens to be;
    this one derives every draw from the batch's own seed instead.
    """

    def __init__(self, seed):  # pylint: disable=super-init-not-called
        # No state variable: there is nothing to advance.
        self._seed = seed
        self._draws = 0

    def next(self, ordered=True):
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._seed,
                                                        self._draws)


def is_stateless_augmentation(augmentation):
    """Whether `augment_statelessly` can apply `augmentation`.

    True for a Keras random image preprocessing layer (`RandomFlip`,
    `RandomRotation`...) or a `keras.Sequential` of them.
    """
    layers = (augmentation.layers if isinstance(augmentation, keras.Sequential)
              else [augmentation])
    return bool(layers) and all(
        callable(getattr(layer, "get_random_transformation", None))
        and callable(getattr(layer, "transform_images", None))
        for layer in layers
    )


def augment_statelessly(augmentation, images, seed):
    """Applies random image layers with every draw derived from `seed`.

    Args:
        augmentation: A layer or `keras.Sequential` that
            `is_stateless_augmentation` accepts.
        images: A batch of images.
        seed: An int64 tensor of shape (2,): the same seed gives the same
            images, whenever and wherever the batch is made.

    Returns:
        The augmented batch.
    """
    layers = (augmentation.layers if isinstance(augmentation, keras.Sequential)
              else [augmentation])
    generator = _BatchSeed(seed)
    for layer in layers:
        transformation = layer.get_random_transformation(
            images, training=True, seed=generator
        )
        images = layer.transform_images(images, transformation, training=True)
    return images


def array_dataset(x, y=None, sample_weight=None, batch_size=32, shuffle=True,
                  seed=None, epoch_seed=None, logits=None, augmentation=None,
                  offsets=None):
    """A `tf.data` pipeline of batches gathered from arrays by index.

    Args:
        x, y, sample_weight: Arrays (or structures of arrays) of the samples.
        batch_size, shuffle, seed, epoch_seed: As for `indexed_batches`.
        logits: Optional teacher logits per sample, packed into the inputs
            with `pack_inputs`.
        offsets: Optional float32 shift of each sample's `logits` row: the
            batches then carry `logits + offsets` as float32 (a
            `TeacherOutputCache`'s centered float16 rows and their offsets).
        augmentation: Optional random image layers applied to `x`, each
            batch's draws derived from `epoch_seed` and the batch's index
            (`augment_statelessly`); needs `epoch_seed`.

    Returns:
        A dataset of `(x, y, sample_weight)` batches (without the `None`
        parts).
    """
    if sample_weight is not None and y is None:
        raise ValueError("`sample_weight` needs labels `y`.")
    if augmentation is not None and epoch_seed is None:
        raise ValueError("`augmentation` draws from `epoch_seed`: pass both.")
    arrays = [
        None if a is None else keras.tree.map_structure(
            tf.convert_to_tensor, a
        )
        for a in (x, y, sample_weight)
    ]
    if offsets is not None:
        offsets = tf.convert_to_tensor(offsets, tf.float32)

    def gather(step, indices):
        x, y, weight = [
            None if a is None else keras.tree.map_structure(
                lambda v: tf.gather(v, indices), a
            )
            for a in arrays
        ]
        if augmentation is not None:
            seed = tf.random.experimental.stateless_fold_in(
                epoch_seed.read_value(), step
            )
            x = augment_statelessly(augmentation, x, seed)
        if logits is not None:
            rows = _gather(logits, indices)
            if offsets is not None:
                # Widening float16 is exact; only the sum rounds, to float32.
                rows = tf.cast(rows, tf.float32) + tf.expand_dims(
                    tf.gather(offsets, indices), -1
                )
            x = pack_inputs(x, rows)
        return tuple(v for v in (x, y, weight) if v is not None)

    return (
        indexed_batches(num_samples(x), batch_size, shuffle, seed, epoch_seed)
        .enumerate()
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
