"""Exporting a classifier to a runtime, and measuring that it still agrees.

`export_model` writes a model through Keras' own `model.export` as a
TensorFlow SavedModel, a LiteRT (`.tflite`) flatbuffer, optionally with
post-training int8 quantization, or an ONNX file. It exports the model's
logits or its class probabilities, whatever the model's own head emits.
`check_parity` (from `kdtrain.parity`, importable from here too) runs the
exported file in its own runtime (TensorFlow, the LiteRT interpreter, ONNX
Runtime) and compares its outputs with Keras'.

SavedModel export needs only TensorFlow. The other formats need packages of
kdtrain's `export` extra (`pip install 'kdtrain[export]'`): LiteRT files
run in `ai-edge-litert`'s interpreter; ONNX files are converted by
`tf2onnx` and `onnx` and run in `onnxruntime`.

Example:

```python
from kdtrain import export

export.export_model(student, "student.onnx", format="onnx")
parity = export.check_parity("student.onnx", student, x_test, y_test)
print(parity.describe())
```
"""

import importlib.util
import os

from kdtrain import files

FORMATS = ("saved_model", "litert", "onnx")
OUTPUTS = ("logits", "probabilities")
FORMAT_NAMES = {"saved_model": "SavedModel", "litert": "LiteRT",
                "onnx": "ONNX"}
# "a SavedModel", "an ONNX", for messages.
A_FORMAT = {format: ("an " if name[0] in "AEIOU" else "a ") + name
            for format, name in FORMAT_NAMES.items()}
SUFFIXES = {"saved_model": "", "litert": ".tflite", "onnx": ".onnx"}
# Float exports agree with Keras within this largest absolute difference.
FLOAT_TOLERANCE = 1e-4
INPUT_NAME = "inputs"
# The Python modules each format needs to be written, and to be run, with
# their pip names (all in the `export` extra).
_WRITE = {"saved_model": (), "litert": (),
          "onnx": (("tf2onnx", "tf2onnx"), ("onnx", "onnx"))}
_RUN = {"saved_model": (), "litert": (("ai_edge_litert", "ai-edge-litert"),),
        "onnx": (("onnxruntime", "onnxruntime"),)}
_KERAS_FORMATS = {"saved_model": "tf_saved_model", "litert": "litert",
                  "onnx": "onnx"}


class MissingExtra(ImportError):
    """A package of kdtrain's `export` extra is not installed."""


def _check_choice(value, choices, argument):
    if value not in choices:
        raise ValueError(
            f"`{argument}` must be one of {', '.join(map(repr, choices))}. "
            f"Received: {argument}={value!r}"
        )
    return value


def missing_packages(format, run=True):
    """The pip names of the packages `format` needs that are not installed.

    Args:
        format: One of `FORMATS`.
        run: Whether running the exported file (`check_parity`) counts too,
            not only writing it.

    Returns:
        A list of pip names, empty when everything is there.
    """
    _check_choice(format, FORMATS, "format")
    needed = _WRITE[format] + (_RUN[format] if run else ())
    return [pip for module, pip in needed
            if importlib.util.find_spec(module) is None]


def require(format, run=True, argument=None):
    """Raises `MissingExtra`, naming the extra, if `format` cannot be used.

    Args:
        format: One of `FORMATS`.
        run: Whether running the exported file is needed too.
        argument: How the caller names the format in messages; defaults to
            `format='...'`.
    """
    missing = missing_packages(format, run)
    if missing:
        where = argument or f"format={format!r}"
        raise MissingExtra(
            f"{where} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'kdtrain[export]' (in a clone of kdtrain: "
            "pip install -e \".[export]\")."
        )


def path_problem(path, format):
    """Why `path` cannot name an export of `format`, or None."""
    suffix = SUFFIXES[_check_choice(format, FORMATS, "format")]
    name = os.fspath(path).rstrip(os.sep)
    if suffix and not name.endswith(suffix):
        return f"{A_FORMAT[format]} file's name ends in {suffix}"
    if not suffix and name.endswith((".tflite", ".onnx", ".keras")):
        return "a SavedModel is a folder, not a .tflite, .onnx or .keras file"
    return None


def is_export(path, format):
    """Whether `path` holds an export of `format` (that may be replaced)."""
    path = os.fspath(path)
    if format == "saved_model":
        known = {"saved_model.pb", "variables", "assets", "fingerprint.pb",
                 "assets.extra"}
        return (os.path.isdir(path)
                and os.path.isfile(os.path.join(path, "saved_model.pb"))
                and set(os.listdir(path)) <= known)
    if not os.path.isfile(path) or path_problem(path, format):
        return False
    with open(path, "rb") as file:
        head = file.read(8)
    if format == "litert":
        return head[4:8] == b"TFL3"  # the flatbuffer's file identifier
    return head[:1] == b"\x08"  # ModelProto's first field, ir_version


def serving_model(model, outputs="logits", output_kind="auto"):
    """The function of `model` an export serves: its logits or probabilities.

    Args:
        model: A `keras.Model` classifier (a `GenerationEnsemble` too).
        outputs: `"logits"` or `"probabilities"` (softmax, or the sigmoid
            of a single unit), whatever `model`'s head emits. Logits of a
            probability head are the exact pre-activation values where the
            graph shows them (`kdtrain.outputs.model_logits`).
        output_kind: What `model` emits: `"auto"`, `"logits"` or
            `"probabilities"`.

    Returns:
        A `keras.Model` calling `model` in inference mode.
    """
    from kdtrain.outputs import resolve_output_kind

    _check_choice(outputs, OUTPUTS, "outputs")
    kind = resolve_output_kind(model, output_kind, "output_kind")
    return _serving_class()(model, kind, outputs)


def _serving_class():
    import keras

    from kdtrain.outputs import model_logits
    from kdtrain.outputs import to_probabilities

    class Serving(keras.Model):
        def __init__(self, model, kind, outputs):
            super().__init__(name=f"{model.name}_{outputs}")
            self.served = model
            self.kind, self.served_outputs = kind, outputs

        def call(self, inputs):
            if self.served_outputs == "logits":
                return model_logits(self.served, inputs, self.kind)
            return to_probabilities(self.served(inputs, training=False),
                                    self.kind)

    return Serving


def export_model(model, path, format="saved_model", outputs="logits",
                 output_kind="auto", input_shape=None, int8=False,
                 representative_data=None, overwrite=False):
    """Exports a classifier for a runtime through Keras' `model.export`.

    The file is written to a temporary name beside `path` and renamed, so
    `path` holds the previous export or the complete new one. Its input is
    float32 of shape `(batch, *input_shape)` with any batch size, named
    `"inputs"`; it takes what the model was trained on, preprocessing
    (e.g. pixel scaling) included.

    Args:
        model: A `keras.Model` classifier (a `GenerationEnsemble` too).
        path: A folder for `"saved_model"`, a `.tflite` file for
            `"litert"`, an `.onnx` file for `"onnx"`.
        format: `"saved_model"`, `"litert"` or `"onnx"`.
        outputs: `"logits"` or `"probabilities"` (see `serving_model`).
        output_kind: What `model` emits; `"auto"` detects a final softmax
            or sigmoid.
        input_shape: One sample's shape; defaults to the model's own.
        int8: Post-training int8 quantization of weights and activations
            (LiteRT only); float32 inputs and outputs are kept.
        representative_data: With `int8`, samples (an array of shape
            `(n, *input_shape)`) that calibrate the activations' ranges,
            e.g. a few hundred training images.
        overwrite: Whether an existing export of `format` at `path` is
            replaced; anything else there is never replaced.

    Returns:
        `path`.

    Raises:
        ValueError: Bad arguments, or `path` taken.
        MissingExtra: A package of the `export` extra is missing.

    Example:

    ```python
    export_model(student, "student.tflite", format="litert", int8=True,
                 representative_data=x_train[:256])
    ```
    """
    import keras
    import numpy as np

    from kdtrain.macs import input_shape_of

    _check_choice(format, FORMATS, "format")
    problem = path_problem(path, format)
    if problem:
        raise ValueError(f"`path` does not fit format={format!r}: {problem}. "
                         f"Received: path={os.fspath(path)!r}")
    if int8 and format != "litert":
        raise ValueError("`int8=True` quantizes LiteRT exports only. "
                         f"Received: format={format!r}")
    if int8 and representative_data is None:
        raise ValueError("`int8=True` needs `representative_data`: samples "
                         "that calibrate the activations' int8 ranges.")
    require(format, run=False)
    path = os.path.normpath(os.fspath(path))
    if os.path.lexists(path) and not (overwrite and is_export(path, format)):
        raise ValueError(
            f"{path} exists" + (
                f" and is not {A_FORMAT[format]} export: it is never "
                "replaced." if overwrite else "; pass `overwrite=True` to "
                "replace an earlier export."))
    shape = tuple(input_shape or input_shape_of(model) or ())
    if not shape or None in shape:
        raise ValueError("`input_shape` must give one sample's full shape. "
                         f"Received: input_shape={input_shape!r}")
    served = serving_model(model, outputs, output_kind)
    served(np.zeros((1, *shape), "float32"))  # builds it
    spec = keras.InputSpec(shape=(None, *shape), dtype="float32",
                           name=INPUT_NAME)
    options = _int8_options(representative_data) if int8 else {}
    with writing(path, format) as temporary:
        served.export(temporary, format=_KERAS_FORMATS[format],
                      input_signature=[spec], verbose=False, **options)
    return path


def _int8_options(samples):
    import numpy as np
    import tensorflow as tf

    samples = np.asarray(samples, "float32")

    def representative_dataset():
        for sample in samples:
            yield [sample[None]]

    return {"optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": representative_dataset,
            "target_spec": {"supported_ops": [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}}


class writing:
    """A temporary path beside `path`, moved to `path` if the block succeeds.

    An earlier file or folder at `path` is moved aside first and removed
    after the rename; on an error `path` is left as it was.

    Example:

    >>> with writing("student.onnx", "onnx") as temporary:
    ...     write_onnx(temporary)
    """

    def __init__(self, path, format):
        self.path = os.path.normpath(os.fspath(path))
        self.temporary = files.temporary_path(self.path, SUFFIXES[format])

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)),
                    exist_ok=True)
        files.remove(self.temporary)
        return self.temporary

    def __exit__(self, kind, error, trace):
        try:
            if kind is None:
                self._install()
        finally:
            files.remove(self.temporary)

    def _install(self):
        if os.path.isdir(self.temporary):
            for root, _, names in os.walk(self.temporary):
                for name in names:
                    files.fsync_path(os.path.join(root, name))
        files.fsync_path(self.temporary)
        if not os.path.isdir(self.temporary):
            # A file replaces the earlier export in one rename.
            os.replace(self.temporary, self.path)
            files.fsync_path(os.path.dirname(os.path.abspath(self.path)))
            return
        # A folder cannot replace a folder in one rename: the earlier one
        # moves aside first (a kill between the renames leaves it there).
        old = files.temporary_path(self.path, ".old")
        if os.path.lexists(self.path):
            files.remove(old)
            os.replace(self.path, old)
        os.replace(self.temporary, self.path)
        files.fsync_path(os.path.dirname(os.path.abspath(self.path)))
        files.remove(old)


def __getattr__(name):
    # `kdtrain.parity` imports this module: its names load on first use.
    if name in ("Parity", "check_parity", "load_runtime"):
        from kdtrain import parity

        return getattr(parity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
