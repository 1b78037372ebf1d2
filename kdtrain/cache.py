"""Teacher-output cache: a frozen teacher's logits, computed once.

A frozen teacher gives the same outputs every epoch when the data are not
randomly augmented, so a `Distiller` can train from outputs computed once in
inference mode instead of running the teacher on every batch.
`TeacherOutputCache` holds them as float16 logits (about 10 MB for
CIFAR-100's 50,000 x 100) with a fingerprint of the teacher's weights.
Each row is stored minus its maximum, and that maximum (the row's offset)
as float32 beside it: float16's relative precision then serves the
differences between a row's logits, whatever the offset, and the batches
carry each row with its offset added back, the logits the teacher gives
online (see `TeacherOutputCache`).

Alignment cannot be fooled. Each row carries the key of its sample (a hash
of the sample's inputs, label and weight, `sample_keys`), a saved cache is
checked against the keys of the data it is used with, and `verify` runs the
teacher again on a random subset of rows. Within a process,
`TeacherOutputCache.dataset` joins each sample to its row by index: the
index is drawn before shuffling and travels with the sample.

The batches carry the cached logits (float32) in the inputs,
`({"inputs": x, "teacher_logits": logits}, y, sample_weight)`; the
`Distiller` reads them there instead of calling its teacher. With augmented
data the teacher must see the student's augmented batch (Beyer et al.
2021), so it runs online: do not cache.
"""

import hashlib
import os

import keras
import numpy as np

from kdtrain import files
from kdtrain import inference
from kdtrain.faults import fault_point
from kdtrain.outputs import model_logits
from kdtrain.outputs import resolve_output_kind
from kdtrain.pipelines import array_dataset
from kdtrain.pipelines import is_randomized
from kdtrain.pipelines import is_shuffled
from kdtrain.pipelines import materialize
from kdtrain.pipelines import num_samples
from kdtrain.pipelines import pack_inputs
from kdtrain.pipelines import unpack_inputs

__all__ = [
    "CacheMismatch", "NonFiniteTeacherOutputs", "TeacherOutputCache",
    "array_dataset", "check_finite_outputs", "is_randomized", "is_shuffled",
    "materialize", "num_samples", "pack_inputs", "sample_keys",
    "teacher_logits", "unpack_inputs", "weights_fingerprint",
]

LOGITS_FILE = "teacher_outputs.npy"
OFFSETS_FILE = "teacher_offsets.npy"
KEYS_FILE = "sample_keys.npy"
INFO_FILE = "teacher_outputs.json"
MEMORY_MAP_BYTES = 256 * 2**20
VERIFIED_ROWS = 64
# float16 keeps 11 significant bits: a recomputed logit may differ from the
# stored one by a rounding step; another sample's logit differs by far more.
_TOLERANCE = 1e-2


class CacheMismatch(ValueError):
    """A saved cache does not belong to this teacher or these samples."""


class NonFiniteTeacherOutputs(ValueError):
    """The teacher emits NaN or infinite outputs: it cannot teach."""


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


def sample_keys(x, y=None, sample_weight=None):
    """A 16-byte key per sample: a hash of its inputs, label and weight.

    Two samples share a key only if they are identical, and identical
    samples have identical teacher outputs, so a key names a row's sample
    whatever order the data come in.

    Returns:
        A NumPy array of `bytes` (dtype `S16`), one key per sample.
    """
    leaves = [
        np.ascontiguousarray(leaf)
        for part in (x, y, sample_weight) if part is not None
        for leaf in keras.tree.flatten(part)
    ]
    count = len(leaves[0])
    rows = [leaf.reshape(count, -1).view(np.uint8) for leaf in leaves]
    keys = np.empty(count, dtype="S16")
    for i in range(count):
        digest = hashlib.blake2b(digest_size=16)
        for row in rows:
            digest.update(row[i])
        keys[i] = digest.digest()
    return keys


def check_finite_outputs(logits, start, batch, name):
    """Raises `NonFiniteTeacherOutputs` naming the batch and its first bad row."""
    stop = start + len(logits)
    finite = np.isfinite(logits)
    if finite.all():
        return
    what = "NaN" if np.isnan(logits).any() else "infinite values"
    row = start + int(np.argmin(finite.all(axis=tuple(range(1, logits.ndim)))))
    raise NonFiniteTeacherOutputs(
        f"The teacher {name} emits {what} on batch {batch} of the training "
        f"data (samples {start} to {stop - 1}; first at sample {row}): it "
        "cannot teach. Check how it was trained or loaded."
    )


def _inference_function(teacher, kind, x):
    """The teacher's float32 logits of a batch, as a NumPy array.

    A logits model runs through its traced outputs function, the one the
    chain's evaluation uses too (`kdtrain.inference`), so a generation is
    traced once to be evaluated and then to teach; a probability head
    through its exact logits (`kdtrain.outputs.model_logits`).
    """
    if kind == "logits":
        return lambda batch: inference.outputs(teacher, batch).astype(
            np.float32
        )
    infer = inference.traced(
        teacher, "logits", lambda batch: model_logits(teacher, batch, kind),
        keras.tree.map_structure(lambda a: a[:1], x),
    )
    return lambda batch: np.asarray(infer(batch))


def _offsets(logits):
    """Each row's maximum as float32; 0 for a single unit (a sigmoid's logit
    is not shift-invariant, so it is stored as it is)."""
    if logits.shape[-1] == 1:
        return np.zeros(logits.shape[:-1], np.float32)
    return logits.max(axis=-1).astype(np.float32)


def teacher_logits(teacher, x, batch_size=256, teacher_outputs="auto",
                   name=None, fault=None):
    """The teacher's float32 logits on every sample of `x`, in order.

    A probability head's are its exact pre-activation logits where its graph
    shows them (`kdtrain.outputs.model_logits`), as in a `Distiller`'s steps.

    A plain loop, not `predict`: under a strategy `predict` would split and
    gather the samples, and the cache needs them all, in order.

    Raises:
        NonFiniteTeacherOutputs: A NaN or infinite output, naming the batch.
    """
    kind = resolve_output_kind(teacher, teacher_outputs, "teacher_outputs")
    infer = _inference_function(teacher, kind, x)
    count = num_samples(x)
    name = name or repr(teacher.name)
    outputs = []
    for batch, start in enumerate(range(0, count, batch_size)):
        stop = min(start + batch_size, count)
        rows = keras.tree.map_structure(lambda a: a[start:stop], x)
        logits = infer(rows)
        check_finite_outputs(logits, start, batch, name)
        outputs.append(logits)
        if fault and stop >= count // 2 > start:
            fault_point(fault)
    return np.concatenate(outputs)


class TeacherOutputCache:
    """A frozen teacher's outputs on a training set, as float16 logits.

    Row `i` holds the teacher's logits for sample `i` of the data it was
    computed on, in inference mode, and optionally that sample's key
    (`sample_keys`). Build it with `compute`, train from it with a
    `Distiller` through `dataset`, keep it with `save` and `load`, and check
    it with `verify`.

    Each row of several classes is stored in float16 minus its maximum,
    and that maximum, the row's offset, in float32 beside it (`offsets`);
    `dataset` delivers `logits + offset` in float32, so every loss,
    `LogitsMSE(center=False)` included, sees the logits the teacher gives
    online. float16 rounds a centered logit (at most 0) within a relative
    `2**-11`, so a class's logit is off by at most `4.9e-4` times its
    distance from the row's maximum, however large the offset; adding the
    offset back in float32 adds at most half an ulp of the sum
    (`ulp(offset) / 2` for a logit no larger than its offset: `1.5e-5` at
    300), the precision of the teacher's own float32 logits. Each soft
    target `softmax(z / T)` moves by at most `2**-11 * (1/e + ln(classes))`
    (to first order: 1.3e-3 for 10 classes, 2.4e-3 for 100, and far less in
    practice). A single unit (a binary classifier's logit) is stored as it
    is, with offset 0, since a sigmoid is not shift-invariant; its soft
    target `sigmoid(z / T)` moves by at most `2**-11 / e = 1.8e-4`.

    Args:
        logits: Array of shape `(samples, classes)`. A float16 array is
            kept as it is; other arrays are split as above into centered
            float16 rows and their offsets.
        fingerprint: `weights_fingerprint(teacher)` of the teacher.
        keys: Optional `sample_keys` of the samples, row by row.
        offsets: Optional float32 offsets of float16 `logits`, one per row,
            added back in the batches (by default 0: the rows as they are).

    Attributes:
        logits: The float16 rows (centered, for a cache from `compute`).
        offsets: The float32 offset of each row, shape `(samples,)`.

    Example:

    ```python
    cache = TeacherOutputCache.compute(teacher, x_train)
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(cache.dataset(x_train, y_train, batch_size=64), epochs=10)
    ```
    """

    def __init__(self, logits, fingerprint, keys=None, offsets=None):
        if isinstance(logits, np.memmap) and logits.dtype == np.float16:
            self.logits = logits
        elif np.asarray(logits).dtype == np.float16:
            self.logits = np.asarray(logits)
        else:
            if offsets is not None:
                raise ValueError(
                    "`offsets` go with float16 `logits`; other arrays are "
                    "split into centered rows and offsets here."
                )
            logits = np.asarray(logits, dtype=np.float32)
            if logits.ndim >= 2:
                offsets = _offsets(logits)
                logits = logits - offsets[..., None]
            self.logits = logits.astype(np.float16)
        if self.logits.ndim < 2:
            raise ValueError(
                "`logits` must have shape (samples, classes). Received "
                f"shape {self.logits.shape}."
            )
        self.offsets = (
            np.zeros(self.logits.shape[:-1], np.float32) if offsets is None
            else np.asarray(offsets, dtype=np.float32)
        )
        if self.offsets.shape != self.logits.shape[:-1]:
            raise ValueError(
                f"`offsets` must have shape {self.logits.shape[:-1]}, one "
                f"per row. Received shape {self.offsets.shape}."
            )
        if keys is not None and len(keys) != len(self.logits):
            raise ValueError(
                f"`keys` has {len(keys)} entries for {len(self.logits)} rows."
            )
        self.fingerprint = fingerprint
        self.keys = None if keys is None else np.asarray(keys, dtype="S16")

    @property
    def num_samples(self):
        """The number of samples (rows)."""
        return int(self.logits.shape[0])

    @property
    def nbytes(self):
        """The size of the float16 logits in bytes (offsets: 4 a row)."""
        return int(self.logits.nbytes)

    @classmethod
    def compute(cls, teacher, x, batch_size=256, teacher_outputs="auto",
                keys=None, name=None, fault=None):
        """Runs `teacher` once over `x` in inference mode.

        Args:
            teacher: The trained `keras.Model`.
            x: Input array (or structure of arrays) of all the samples,
                in the order the cache will index them.
            batch_size: Batch size of the inference pass.
            teacher_outputs: `"auto"`, `"logits"` or `"probabilities"`.
            keys: Optional `sample_keys` of the samples, kept with the rows.
            name: How errors name the teacher (defaults to its name).
            fault: Optional fault point reached halfway.

        Returns:
            A `TeacherOutputCache`.

        Raises:
            NonFiniteTeacherOutputs: The teacher emits NaN or infinity,
                naming the batch.
            ValueError: A centered logit (or a single unit's logit) does
                not fit in float16 (beyond 65504 in magnitude).
        """
        logits = teacher_logits(teacher, x, batch_size, teacher_outputs, name,
                                fault)
        offsets = _offsets(logits)
        logits = logits - offsets[..., None]
        with np.errstate(over="ignore"):
            stored = logits.astype(np.float16)
        if not np.all(np.isfinite(stored)):
            raise ValueError(
                f"The teacher {name or repr(teacher.name)} emits logits "
                "beyond float16's range (largest magnitude "
                f"{np.abs(logits).max():.4g}"
                + ("" if logits.shape[-1] == 1 else
                   ", each row's maximum subtracted")
                + "): they cannot be cached. Train with cache_teacher=False."
            )
        return cls(stored, weights_fingerprint(teacher), keys, offsets)

    def check(self, teacher=None, samples=None, keys=None,
              source="The cache"):
        """Raises `CacheMismatch` unless the cache fits the teacher and data.

        Args:
            teacher: The teacher the cache should come from, or None.
            samples: The number of samples of the data, or None.
            keys: The `sample_keys` of the data, row by row, or None.
            source: How the error names the cache (e.g. its path).
        """
        if samples is not None and samples != self.num_samples:
            raise CacheMismatch(
                f"{source} holds teacher outputs for {self.num_samples} "
                f"samples, but the data has {samples}: it was computed on "
                "other data. Compute it again on this data."
            )
        if keys is not None and (
            self.keys is None or not np.array_equal(self.keys, keys)
        ):
            raise CacheMismatch(
                f"{source} was computed on other samples, or on these in "
                "another order (its sample keys differ from the data's): "
                "reorder it with `aligned(keys)`, or compute it again."
            )
        if teacher is not None and weights_fingerprint(teacher) != (
            self.fingerprint
        ):
            raise CacheMismatch(
                f"{source} was computed by another teacher: the weights of "
                f"{teacher.name!r} do not match its fingerprint "
                f"({self.fingerprint[:12]}...). Compute it again with this "
                "teacher."
            )

    def aligned(self, keys, source="The cache"):
        """The cache with its rows in the order of the samples `keys`.

        Rows (and their offsets) follow their own sample's key, so a cache
        saved in another order is reordered; one of other samples is
        refused.

        Raises:
            CacheMismatch: The cache has no keys, or other samples'.
        """
        keys = np.asarray(keys, dtype="S16")
        if self.keys is not None and np.array_equal(self.keys, keys):
            return self
        saved = None if self.keys is None else np.argsort(self.keys,
                                                           kind="stable")
        wanted = np.argsort(keys, kind="stable")
        if saved is None or len(saved) != len(wanted) or not np.array_equal(
            self.keys[saved], keys[wanted]
        ):
            raise CacheMismatch(
                f"{source} was computed on other samples (its sample keys "
                "differ from the data's). Compute it again on this data."
            )
        logits = np.empty(self.logits.shape, np.float16)
        logits[wanted] = self.logits[saved]
        offsets = np.empty(self.offsets.shape, np.float32)
        offsets[wanted] = self.offsets[saved]
        return TeacherOutputCache(logits, self.fingerprint, keys, offsets)

    def verify(self, teacher, x, teacher_outputs="auto", rows=VERIFIED_ROWS,
               source="The cache"):
        """Runs `teacher` on random rows and compares them with the cache.

        A cache whose rows belong to other samples (or another teacher)
        fails here even if its files and keys look right, as does one whose
        rows would give other logits than the teacher's (with their offsets
        added back, as `dataset` gives them).

        Raises:
            CacheMismatch: A recomputed row differs beyond float16 rounding.
        """
        count = min(rows, self.num_samples)
        chosen = np.sort(np.random.default_rng().choice(
            self.num_samples, size=count, replace=False
        ))
        subset = keras.tree.map_structure(lambda a: np.asarray(a)[chosen], x)
        fresh = teacher_logits(teacher, subset, count, teacher_outputs)
        cached = np.asarray(self.logits[chosen], dtype=np.float32)
        offsets = self.offsets[chosen][..., None]
        # Compared without the offsets, at the scale float16 rounds; a
        # recomputation in other batches may round a large logit's float32
        # sum differently by a few of its ulps.
        close = np.isclose(
            cached, fresh - offsets, rtol=_TOLERANCE,
            atol=_TOLERANCE + 8 * np.spacing(np.abs(offsets)),
        )
        if not close.all():
            bad = int(chosen[np.argmin(close.all(axis=1))])
            raise CacheMismatch(
                f"{source} does not hold this teacher's outputs for these "
                f"samples: recomputing row {bad} gave other logits (checked "
                f"{count} random rows). Compute it again."
            )

    def save(self, directory, fault=None):
        """Writes the cache as the folder `directory`, whole or not at all.

        The logits, their offsets, the keys and a description with their
        SHA-256 are written to a temporary folder that is renamed into place.
        """
        directory = os.fspath(directory)
        if os.path.isdir(directory):
            others = set(os.listdir(directory)) - {
                LOGITS_FILE, OFFSETS_FILE, KEYS_FILE, INFO_FILE
            }
            if others:
                raise ValueError(
                    f"{directory} holds other files than a cache "
                    f"({', '.join(sorted(others)[:5])}): save the cache to a "
                    "new or empty folder."
                )
        files.remove(directory)
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        with files.replacing(directory, fault=fault) as temporary:
            os.makedirs(temporary)
            names = {"logits": LOGITS_FILE, "offsets": OFFSETS_FILE}
            np.save(os.path.join(temporary, LOGITS_FILE), self.logits)
            np.save(os.path.join(temporary, OFFSETS_FILE), self.offsets)
            if self.keys is not None:
                np.save(os.path.join(temporary, KEYS_FILE), self.keys)
                names["keys"] = KEYS_FILE
            info = {
                "fingerprint": self.fingerprint,
                "shape": list(self.logits.shape),
                "files": names,
                "sha256": {
                    name: files.sha256_file(os.path.join(temporary, name))
                    for name in names.values()
                },
            }
            with open(os.path.join(temporary, INFO_FILE), "w") as file:
                file.write(files.to_json(info))

    @staticmethod
    def exists(directory):
        """Whether `directory` holds a saved cache."""
        return os.path.exists(os.path.join(directory, INFO_FILE))

    @staticmethod
    def delete(directory):
        """Removes a saved cache folder, if there is one."""
        files.remove(os.fspath(directory))

    @classmethod
    def load(cls, directory, teacher=None, samples=None, keys=None,
             memory_map="auto"):
        """Reads a cache written by `save`, checked against its use.

        Args:
            directory: The folder given to `save`.
            teacher: If given, the cache must come from this teacher.
            samples: If given, the cache must have this many samples.
            keys: If given, the rows are reordered to follow these sample
                keys (`aligned`); a cache of other samples is refused.
            memory_map: Whether to map the logits from disk instead of
                reading them; `"auto"` does above `MEMORY_MAP_BYTES`.

        A cache saved without its rows' offsets is refused: its rows may
        be uncentered float16 (far coarser for large logits) or centered
        with their offsets lost (other targets for
        `LogitsMSE(center=False)`), and its files do not tell which.

        Returns:
            A `TeacherOutputCache`.

        Raises:
            CacheMismatch: Damaged files (checksums, shapes), a cache
                without offsets, or a cache that does not fit `teacher`,
                `samples` or `keys`.
        """
        directory = os.fspath(directory)
        try:
            info = files.read_json(os.path.join(directory, INFO_FILE))
            if "offsets" not in info["files"]:
                raise CacheMismatch(
                    f"The cache in {directory} holds no offsets of its "
                    "rows (an older format): its logits cannot be told "
                    "from centered ones. Compute it again."
                )
            for name, digest in info["sha256"].items():
                if files.sha256_file(os.path.join(directory, name)) != digest:
                    raise CacheMismatch(
                        f"The cache in {directory} is damaged: {name} does "
                        "not match its checksum."
                    )
            path = os.path.join(directory, info["files"]["logits"])
            if memory_map == "auto":
                memory_map = os.path.getsize(path) > MEMORY_MAP_BYTES
            logits = np.load(path, mmap_mode="r" if memory_map else None)
            offsets = np.load(os.path.join(directory,
                                           info["files"]["offsets"]))
            saved_keys = None
            if "keys" in info["files"]:
                saved_keys = np.load(
                    os.path.join(directory, info["files"]["keys"])
                )
        except (OSError, KeyError, TypeError, files.DamagedFileError) as error:
            raise CacheMismatch(
                f"The cache in {directory} cannot be read ({error})."
            ) from None
        if list(logits.shape) != info["shape"] or logits.dtype != np.float16:
            raise CacheMismatch(
                f"The cache in {directory} is damaged: {LOGITS_FILE} holds "
                f"{logits.dtype} {list(logits.shape)}, {INFO_FILE} says "
                f"float16 {info['shape']}."
            )
        if (offsets.shape != logits.shape[:-1]
                or offsets.dtype != np.float32):
            raise CacheMismatch(
                f"The cache in {directory} is damaged: {OFFSETS_FILE} holds "
                f"{offsets.dtype} {list(offsets.shape)}, not float32 "
                f"{list(logits.shape[:-1])}."
            )
        source = f"The cache in {directory}"
        cache = cls(logits, info["fingerprint"], saved_keys, offsets)
        if keys is not None:
            cache = cache.aligned(keys, source)
        cache.check(teacher, samples, source=source)
        return cache

    def dataset(self, x, y=None, sample_weight=None, batch_size=32,
                shuffle=True, seed=None, epoch_seed=None):
        """A `tf.data` pipeline of batches joined to their cached logits.

        The pipeline shuffles sample indices, batches them, then gathers
        the inputs, labels, weights and logits of the same indices, so
        every sample keeps its own teacher outputs. Each row comes with its
        offset added back, as float32: the teacher's logits within the
        bounds of the class docstring.

        Args:
            x: The inputs the cache was computed on, in the same order.
            y: Optional labels.
            sample_weight: Optional per-sample weights.
            batch_size: Samples per batch.
            shuffle: Whether to reshuffle the samples every epoch.
            seed: Optional shuffling seed.
            epoch_seed: Optional variable fixing each epoch's order (see
                `indexed_batches`).

        Returns:
            A `tf.data.Dataset` of `(pack_inputs(x, logits), y,
            sample_weight)` batches (without the `None` parts).
        """
        self.check(samples=num_samples(x))
        return array_dataset(x, y, sample_weight, batch_size, shuffle, seed,
                             epoch_seed, logits=self.logits,
                             offsets=self.offsets)

    def __repr__(self):
        return (
            f"<TeacherOutputCache {self.num_samples} x "
            f"{self.logits.shape[1:]} float16 with offsets, "
            f"{self.nbytes / 1e6:.1f} MB>"
        )
