"""Running an exported model in its own runtime, and checking it against Keras.

`load_runtime` opens an export of `kdtrain.export.export_model` in the
runtime it is made for: TensorFlow for a SavedModel, the LiteRT interpreter
(`ai-edge-litert`) for a `.tflite` file, ONNX Runtime for an `.onnx` file.
`check_parity` runs it and the Keras model on the same samples and reports
the largest absolute difference of their outputs and both accuracies.

Example:

```python
from kdtrain import parity

runtime = parity.load_runtime("student.tflite")
probabilities = runtime(x_test[:8])
result = parity.check_parity("student.tflite", student, x_test, y_test)
print(result.describe())
assert result.passed  # float exports: within 1e-4 of Keras
```
"""

import dataclasses
import importlib.metadata
import math
import os

import numpy as np

from kdtrain.export import FLOAT_TOLERANCE
from kdtrain.export import FORMAT_NAMES
from kdtrain.export import FORMATS
from kdtrain.export import OUTPUTS
from kdtrain.export import require
from kdtrain.export import serving_model


def format_of(path):
    """The export format a path holds: a folder is a SavedModel."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "saved_model"
    for format, suffix in (("litert", ".tflite"), ("onnx", ".onnx")):
        if path.endswith(suffix):
            return format
    raise ValueError(f"{path} is neither a SavedModel folder, a .tflite nor "
                     "an .onnx file.")


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


class _SavedModel:
    def __init__(self, path):
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        self._loaded = loaded  # keeps its variables alive
        self._function = getattr(loaded, "serve", None) or (
            loaded.signatures["serving_default"])
        self.name = f"TensorFlow {tf.__version__}"

    def __call__(self, x):
        outputs = self._function(x)
        if isinstance(outputs, dict):
            (outputs,) = outputs.values()
        return np.asarray(outputs)


class _LiteRT:
    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=path)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._shape = None
        version = _version("ai-edge-litert")
        self.name = f"LiteRT interpreter (ai-edge-litert {version})"

    def __call__(self, x):
        if x.shape != self._shape:  # any batch size
            self._interpreter.resize_tensor_input(self._input, x.shape)
            self._interpreter.allocate_tensors()
            self._shape = x.shape
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output))


class _ONNX:
    def __init__(self, path):
        import onnxruntime

        self._session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.name = f"ONNX Runtime {onnxruntime.__version__}"

    def __call__(self, x):
        return np.asarray(self._session.run(None, {self._input: x})[0])


_RUNTIMES = {"saved_model": _SavedModel, "litert": _LiteRT, "onnx": _ONNX}


def load_runtime(path, format=None):
    """An exported model, loaded in its runtime, as a function of a batch.

    Args:
        path: A SavedModel folder, `.tflite` or `.onnx` file.
        format: One of `kdtrain.export.FORMATS`; defaults to what `path`
            looks like.

    Returns:
        A callable from a float32 NumPy batch (any batch size) to the
        outputs as a NumPy array; its `name` says the runtime and version.

    Raises:
        MissingExtra: The runtime is not installed.

    Example:

    >>> runtime = load_runtime("student.onnx")
    >>> runtime.name
    'ONNX Runtime 1.32.0'
    """
    format = format or format_of(path)
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. "
                         f"Received: format={format!r}")
    require(format)
    return _RUNTIMES[format](os.fspath(path))


def predictions(outputs, outputs_kind):
    """The predicted classes of logits or probabilities (one unit: 0/1)."""
    outputs = np.asarray(outputs)
    if outputs.shape[-1] == 1:
        threshold = 0.0 if outputs_kind == "logits" else 0.5
        return (outputs[:, 0] > threshold).astype("int64")
    return outputs.argmax(axis=-1)


def _labels(y):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        return y.argmax(axis=-1)
    return y.reshape(-1).astype("int64")


@dataclasses.dataclass(frozen=True)
class Parity:
    """How an exported model's outputs compare with its Keras model's.

    Attributes:
        format: The export format.
        runtime: The runtime and its version.
        outputs: `"logits"` or `"probabilities"`.
        samples: The number of samples compared.
        max_abs_diff: The largest absolute difference of an output.
        tolerance: The largest allowed (float exports), or None (int8).
        keras_accuracy: Keras' accuracy on the samples, or None unlabeled.
        runtime_accuracy: The runtime's accuracy, or None unlabeled.
        int8: Whether the export is int8-quantized.
    """

    format: str
    runtime: str
    outputs: str
    samples: int
    max_abs_diff: float
    tolerance: float
    keras_accuracy: float = None
    runtime_accuracy: float = None
    int8: bool = False

    @property
    def passed(self):
        """Within the tolerance (always true for int8, which has none)."""
        if self.tolerance is None:
            return True
        return math.isfinite(self.max_abs_diff) and (
            self.max_abs_diff <= self.tolerance)

    @property
    def accuracy_drop(self):
        """Keras' accuracy minus the runtime's, or None unlabeled."""
        if self.keras_accuracy is None:
            return None
        return self.keras_accuracy - self.runtime_accuracy

    def describe(self):
        """The result in a few lines of text."""
        kind = FORMAT_NAMES[self.format] + (" int8" if self.int8 else "")
        verdict = ("int8: no tolerance" if self.tolerance is None else
                   f"tolerance {self.tolerance:.0e}: "
                   + ("OK" if self.passed else "FAILED"))
        lines = [
            f"Parity of the {kind} export ({self.outputs}) in {self.runtime} "
            f"against Keras, on {self.samples} samples:",
            f"  largest absolute difference: {self.max_abs_diff:.3g} "
            f"({verdict})",
        ]
        if self.keras_accuracy is not None:
            drop = self.accuracy_drop
            lines.append(
                f"  accuracy: {self.runtime_accuracy:.4f} in {kind}, "
                f"{self.keras_accuracy:.4f} in Keras ("
                + (f"a drop of {drop:.4f})" if drop >= 0
                   else f"{-drop:.4f} higher)"))
        return "\n".join(lines)


def check_parity(path, model, x, y=None, format=None, outputs="logits",
                 output_kind="auto", int8=False, tolerance=FLOAT_TOLERANCE,
                 batch_size=64):
    """Runs an export and its Keras model on `x` and compares them.

    Args:
        path: The export (`kdtrain.export.export_model`'s `path`).
        model: The Keras model it was exported from.
        x: Float32 samples, `(n, *input_shape)`.
        y: Optional labels of `x` (class indices, one-hot rows or 0/1), for
            the accuracies.
        format: The export's format; defaults to what `path` looks like.
        outputs: What was exported: `"logits"` or `"probabilities"`.
        output_kind: What `model` emits (as given to `export_model`).
        int8: Whether the export is int8-quantized: its difference is
            reported, not held to `tolerance`.
        tolerance: The largest absolute difference a float export may have.
        batch_size: Samples per call of either model.

    Returns:
        A `Parity`; `passed` tells whether a float export agrees.

    Example:

    >>> result = check_parity("student.onnx", student, x_test, y_test)
    >>> result.max_abs_diff < 1e-4, result.runtime_accuracy
    (True, 0.9694)
    """
    from kdtrain import inference

    if outputs not in OUTPUTS:
        raise ValueError(f"`outputs` must be one of {OUTPUTS}. "
                         f"Received: outputs={outputs!r}")
    format = format or format_of(path)
    runtime = load_runtime(path, format)
    served = serving_model(model, outputs, output_kind)
    x = np.asarray(x, "float32")
    expected, actual = [], []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        expected.append(inference.outputs(served, batch))
        actual.append(runtime(batch))
    expected, actual = np.concatenate(expected), np.concatenate(actual)
    if expected.shape != actual.shape:
        raise ValueError(f"{os.fspath(path)} gives outputs of shape "
                         f"{actual.shape}; Keras gives {expected.shape}.")
    accuracies = (None, None)
    if y is not None:
        labels = _labels(y)
        accuracies = tuple(float(np.mean(predictions(o, outputs) == labels))
                           for o in (expected, actual))
    return Parity(
        format=format, runtime=runtime.name, outputs=outputs,
        samples=len(x),
        max_abs_diff=float(np.max(np.abs(expected - actual))) if len(x)
        else 0.0,
        tolerance=None if int8 else tolerance,
        keras_accuracy=accuracies[0], runtime_accuracy=accuracies[1],
        int8=int8,
    )
