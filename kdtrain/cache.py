"""Teacher-output cache: a frozen teacher's logits, computed once.

A frozen teacher gives the same outputs every epoch when the data are not
randomly augmented, so a `Distiller` can train from outputs computed once in
inference mode instead of running the teacher on every batch.
`TeacherOutputCache` holds them as float16 logits (about 10 MB for
CIFAR-100's 50,000 x 100) with a fingerprint of the teacher's weights, and
`TeacherOutputCache.dataset` joins each sample to its own row by the
sample's index: the index is drawn before shuffling and travels with the
sample, so a shuffle can never pair a sample with another one's outputs.

The batches carry the cached logits in the inputs,
`({"inputs": x, "teacher_logits": logits}, y, sample_weight)`; the
`Distiller` reads them there instead of calling its teacher. With augmented
data the teacher must see the student's augmented batch (Beyer et al.
2021), so it runs online: do not cache.
"""

import hashlib
import os

import keras
import numpy as np
import tensorflow as tf

from kdtrain.outputs import resolve_output_kind
from kdtrain.outputs import to_logits
from kdtrain.runfiles import read_json
from kdtrain.runfiles import write_atomically
from kdtrain.runfiles import write_json_atomically

INPUTS_KEY = "inputs"
LOGITS_KEY = "teacher_logits"
LOGITS_FILE = "teacher_outputs.npy"
INFO_FILE = "teacher_outputs.json"
MEMORY_MAP_BYTES = 256 * 2**20
_FORMAT = 1


def weights_fingerprint(model):
    """SHA-256 of a model's weight values.

    Args:
        model: A built `keras.Model`.

    Returns:
        The hexadecimal digest of the weights' bytes, in `model.weights`
        order.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(
            weight
        )).tobytes())
    return digest.hexdigest()


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
    parts = []
    for position in range(3):
        if batches[0][position] is None:
            parts.append(None)
            continue
        parts.append(keras.tree.map_structure(
            lambda *values: np.concatenate(values),
            *[batch[position] for batch in batches],
        ))
    return (*parts, num_samples(batches[0][0]))


class TeacherOutputCache:
    """A frozen teacher's outputs on a training set, as float16 logits.

    Row `i` holds the teacher's logits (log-probabilities for a
    probability head) for sample `i` of the data it was computed on, in
    inference mode. Build it with `compute`, train from it with a
    `Distiller` through `dataset`, keep it with `save` and `load`.

    Args:
        logits: Array of shape `(samples, classes)` (kept as float16).
        fingerprint: `weights_fingerprint(teacher)` of the teacher.

    Example:

    ```python
    cache = TeacherOutputCache.compute(teacher, x_train)
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(cache.dataset(x_train, y_train, batch_size=64), epochs=10)
    ```
    """

    def __init__(self, logits, fingerprint):
        if isinstance(logits, np.memmap) and logits.dtype == np.float16:
            self.logits = logits
        else:
            self.logits = np.asarray(logits, dtype=np.float16)
        if self.logits.ndim < 2:
            raise ValueError(
                "`logits` must have shape (samples, classes). Received "
                f"shape {self.logits.shape}."
            )
        self.fingerprint = fingerprint

    @property
    def num_samples(self):
        """The number of samples (rows)."""
        return int(self.logits.shape[0])

    @property
    def nbytes(self):
        """The size of the logits in bytes."""
        return int(self.logits.nbytes)

    @classmethod
    def compute(cls, teacher, x, batch_size=256, teacher_outputs="auto"):
        """Runs `teacher` once over `x` in inference mode.

        Args:
            teacher: The trained `keras.Model`.
            x: Input array (or structure of arrays) of all the samples,
                in the order the cache will index them.
            batch_size: Batch size of the inference pass.
            teacher_outputs: `"auto"`, `"logits"` or `"probabilities"`.

        Returns:
            A `TeacherOutputCache`.

        Raises:
            ValueError: If a logit does not fit in float16.
        """
        kind = resolve_output_kind(teacher, teacher_outputs, "teacher_outputs")

        @tf.function(reduce_retracing=True)
        def infer(batch):
            return to_logits(teacher(batch, training=False), kind)

        # A plain loop, not `predict`: under a strategy, `predict` would
        # split and gather the samples; the cache needs them all, in order.
        batches = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
        logits = np.concatenate(
            [infer(batch).numpy() for batch in batches]
        )
        with np.errstate(over="ignore"):
            stored = logits.astype(np.float16)
        if not np.all(np.isfinite(stored)[np.isfinite(logits)]):
            raise ValueError(
                f"The teacher {teacher.name!r} emits logits beyond float16's "
                f"range (largest magnitude {np.abs(logits).max():.4g}): they "
                "cannot be cached. Train with cache_teacher=False."
            )
        return cls(stored, weights_fingerprint(teacher))

    def check(self, teacher=None, samples=None, source="The cache"):
        """Raises `ValueError` unless the cache fits `teacher` and the data.

        Args:
            teacher: The teacher the cache should come from, or None.
            samples: The number of samples of the data, or None.
            source: How the error names the cache (e.g. its path).
        """
        if samples is not None and samples != self.num_samples:
            raise ValueError(
                f"{source} holds teacher outputs for {self.num_samples} "
                f"samples, but the data has {samples}: it was computed on "
                "other data. Compute it again on this data."
            )
        if teacher is not None and weights_fingerprint(teacher) != (
            self.fingerprint
        ):
            raise ValueError(
                f"{source} was computed by another teacher: the weights of "
                f"{teacher.name!r} do not match its fingerprint "
                f"({self.fingerprint[:12]}...). Compute it again with this "
                "teacher."
            )

    def save(self, directory):
        """Writes the logits and their fingerprint into `directory`.

        Each file is written to a temporary name and renamed, so a crash
        leaves either the whole cache or none.
        """
        os.makedirs(directory, exist_ok=True)
        write_atomically(
            os.path.join(directory, LOGITS_FILE),
            lambda f: np.save(f, self.logits),
        )
        info = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint,
            "shape": list(self.logits.shape),
        }
        write_json_atomically(os.path.join(directory, INFO_FILE), info)

    @staticmethod
    def exists(directory):
        """Whether `directory` holds a saved cache."""
        return os.path.exists(os.path.join(directory, INFO_FILE))

    @staticmethod
    def delete(directory):
        """Removes a saved cache from `directory`, if there is one."""
        for name in (INFO_FILE, LOGITS_FILE):
            path = os.path.join(directory, name)
            if os.path.exists(path):
                os.remove(path)

    @classmethod
    def load(cls, directory, teacher=None, samples=None,
             memory_map="auto"):
        """Reads a cache written by `save`, checked against its use.

        Args:
            directory: The directory given to `save`.
            teacher: If given, the cache must come from this teacher.
            samples: If given, the cache must have this many samples.
            memory_map: Whether to map the logits from disk instead of
                reading them; `"auto"` does above `MEMORY_MAP_BYTES`.

        Returns:
            A `TeacherOutputCache`.

        Raises:
            ValueError: If the files disagree or do not fit `teacher` or
                `samples`.
        """
        path = os.path.join(directory, LOGITS_FILE)
        info = read_json(os.path.join(directory, INFO_FILE))
        if memory_map == "auto":
            memory_map = os.path.getsize(path) > MEMORY_MAP_BYTES
        logits = np.load(path, mmap_mode="r" if memory_map else None)
        if list(logits.shape) != info["shape"] or logits.dtype != np.float16:
            raise ValueError(
                f"The cache in {directory!r} is damaged: {LOGITS_FILE} holds "
                f"{logits.dtype} {list(logits.shape)}, {INFO_FILE} says "
                f"float16 {info['shape']}. Delete both files."
            )
        cache = cls(logits, info["fingerprint"])
        cache.check(teacher, samples, source=f"The cache in {directory!r}")
        return cache

    def dataset(self, x, y=None, sample_weight=None, batch_size=32,
                shuffle=True, seed=None):
        """A `tf.data` pipeline of batches joined to their cached logits.

        The pipeline shuffles sample indices, batches them, then gathers
        the inputs, labels, weights and logits of the same indices, so
        every sample keeps its own teacher outputs.

        Args:
            x: The inputs the cache was computed on, in the same order.
            y: Optional labels.
            sample_weight: Optional per-sample weights.
            batch_size: Samples per batch.
            shuffle: Whether to reshuffle the samples every epoch.
            seed: Optional shuffling seed.

        Returns:
            A `tf.data.Dataset` of `(pack_inputs(x, logits), y,
            sample_weight)` batches (without the `None` parts).
        """
        self.check(samples=num_samples(x))
        if sample_weight is not None and y is None:
            raise ValueError("`sample_weight` needs labels `y`.")
        arrays = [x, y, sample_weight]
        arrays = [
            None if a is None else keras.tree.map_structure(
                tf.convert_to_tensor, a
            )
            for a in arrays
        ]
        logits = self.logits

        def gather(indices):
            x, y, weight = [
                None if a is None else keras.tree.map_structure(
                    lambda v: tf.gather(v, indices), a
                )
                for a in arrays
            ]
            x = pack_inputs(x, _gather(logits, indices))
            return tuple(v for v in (x, y, weight) if v is not None)

        indices = tf.data.Dataset.range(self.num_samples)
        if shuffle:
            indices = indices.shuffle(
                self.num_samples, seed=seed, reshuffle_each_iteration=True
            )
        return (
            indices.batch(batch_size)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )

    def __repr__(self):
        return (
            f"<TeacherOutputCache {self.num_samples} x "
            f"{self.logits.shape[1:]} float16, {self.nbytes / 1e6:.1f} MB>"
        )
