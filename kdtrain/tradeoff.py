"""What each model of a run costs: size, compute, speed, next to accuracy.

The point of a student is a model that is smaller and faster at nearly the
teacher's accuracy. `measure` puts numbers on it for every model and
ensemble of a run: parameters, size on disk (as a `.keras` file, without
optimizer state), multiply-accumulates per sample (`kdtrain.macs`), CPU
latency per sample at batch 1 and throughput at batch 64, each the median
over repeats that take turns between the models (so that a busy moment of
the machine does not fall on one model alone), with the machine they were
measured on. `kdtrain evaluate` writes
them to the run's `tradeoff.json`, with the SHA-256 of every model file;
`kdtrain report` shows them while the files still match.

Reading, checking and showing `tradeoff.json` needs no TensorFlow;
measuring imports it.

Example:

```python
from kdtrain import tradeoff

data = tradeoff.measure({"teacher": teacher, "gen-1": student},
                        accuracy={"teacher": 0.97, "gen-1": 0.96})
print(tradeoff.markdown_table(data))
```
"""

import functools
import os
import platform
import statistics
import subprocess
import tempfile
import time

from kdtrain import __version__
from kdtrain import files

TRADEOFF_FILE = "tradeoff.json"
BATCH_SIZES = (1, 64)
REPEATS = 7
# Each timed block repeats a call until it lasts at least this long.
MIN_SECONDS = 0.05


def cpu_model():
    """The CPU's model name (`/proc/cpuinfo`, `lscpu`, else the platform)."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True,
                                 timeout=10).stdout
        for line in listing.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine():
    """The machine and TensorFlow set-up the speeds are measured with."""
    import tensorflow as tf

    from kdtrain.options import usable_cores

    cores = usable_cores()
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return {"cpu": cpu_model(), "cores": cores,
            "threads": threads or cores, "tensorflow": tf.__version__,
            "platform": platform.platform()}


def _timer(function, batch, minimum):
    """Seconds per call of `function(batch)`, over calls lasting `minimum`."""
    calls, start = 0, time.perf_counter()
    while True:
        function(batch).numpy()  # waits for the result
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= minimum:
            return elapsed / calls


def _infer(model, x):
    return model(x, training=False)


def saved_size(model):
    """Bytes of `model` saved as a `.keras` file (weights and
    configuration, without optimizer state)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path, include_optimizer=False)
        return os.path.getsize(path)


def measure_speed(models, input_shape, repeats=REPEATS,
                  min_seconds=MIN_SECONDS):
    """CPU latency at batch 1 and throughput at batch 64 of each model.

    Each model runs through one traced function (`kdtrain.inference`) on
    random float32 inputs, in inference mode. Every repeat times each model
    in turn, starting from a different one; the medians are reported.

    Args:
        models: A dict from name to `keras.Model`.
        input_shape: One sample's shape.
        repeats: Timings per model and batch size.
        min_seconds: Each timing repeats calls until it lasts this long.

    Returns:
        A dict from name to `{"latency_ms": ..., "throughput": ...}`: the
        median milliseconds per sample at batch 1, and samples per second
        at batch 64.

    Example:

    >>> measure_speed({"student": student}, (32, 32, 3), repeats=3)
    {'student': {'latency_ms': 1.9, 'throughput': 2140.5}}
    """
    import numpy as np

    from kdtrain import inference

    rng = np.random.default_rng(0)
    batches = {size: rng.random((size, *input_shape), dtype="float32")
               for size in BATCH_SIZES}
    functions = {}
    for name, model in models.items():
        functions[name] = inference.traced(
            model, "outputs", functools.partial(_infer, model), batches[1])
        for batch in batches.values():  # traced and warmed up
            functions[name](batch).numpy()
    times = {name: {size: [] for size in BATCH_SIZES} for name in models}
    names = list(models)
    for repeat in range(repeats):
        turn = repeat % len(names) if names else 0
        for name in names[turn:] + names[:turn]:
            for size, batch in batches.items():
                times[name][size].append(
                    _timer(functions[name], batch, min_seconds))
    small, large = BATCH_SIZES
    return {name: {
        "latency_ms": 1000 * statistics.median(t[small]) / small,
        "throughput": large / statistics.median(t[large]),
    } for name, t in times.items()}


def measure(models, input_shape=None, accuracy=None, labels=None,
            paths=None, root=None, repeats=REPEATS):
    """The trade-off of several models (and ensembles), as JSON data.

    Args:
        models: A dict from name (`"teacher"`, `"gen-1"`, `"ensemble"`...)
            to `keras.Model`.
        input_shape: One sample's shape; defaults to the first model's.
        accuracy: Optional dict from name to test accuracy.
        labels: Optional dict from name to the name shown.
        paths: Optional dict from name to its model files (an ensemble's
            are its members'): their SHA-256 are recorded, so that
            `read_matching` can tell whether they changed since.
        root: The folder relative paths start from; defaults to the
            current folder.
        repeats: Timings per model and batch size (`measure_speed`).

    Returns:
        A dict with `rows` (one per model: `name`, `label`, `params`,
        `size_bytes` (`saved_size`), `macs`, `latency_ms`, `throughput`,
        `accuracy`, `files`), `machine`, `repeats`, `batch_sizes` and
        `kdtrain_version`; `write` saves it.
    """
    from kdtrain.macs import count_macs
    from kdtrain.macs import input_shape_of

    if input_shape is None:
        input_shape = input_shape_of(next(iter(models.values())))
    speeds = measure_speed(models, tuple(input_shape), repeats)
    rows = []
    for name, model in models.items():
        try:
            macs = count_macs(model, input_shape)
        except ValueError:  # a subclassed model: its layers are hidden
            macs = None
        model_files = {os.fspath(p): os.path.join(root or "", p)
                       for p in (paths or {}).get(name) or ()}
        rows.append({
            "name": name,
            "label": (labels or {}).get(name, name),
            "params": int(model.count_params()),
            "size_bytes": saved_size(model),
            "macs": macs,
            **speeds[name],
            "accuracy": (accuracy or {}).get(name),
            "files": {shown: files.sha256_file(path)
                      for shown, path in model_files.items()},
        })
    return {"rows": rows, "machine": machine(), "repeats": repeats,
            "batch_sizes": list(BATCH_SIZES), "kdtrain_version": __version__}


def measure_run(directory, table=None, repeats=REPEATS):
    """Measures every model and ensemble of a finished run, and writes them
    to its `tradeoff.json` (`kdtrain evaluate` does).

    Args:
        directory: The run's directory.
        table: Its results table, for the test accuracies and labels;
            defaults to `results.json`'s.
        repeats: Timings per model and batch size.

    Returns:
        The data written (see `measure`).
    """
    from kdtrain.chain.lock import DirectoryLock
    from kdtrain.run_models import RunModels

    models = RunModels(directory)
    rows = [row for row in table or models.table if row["split"] == "test"]
    lock = DirectoryLock(models.path)
    lock.acquire(shared=True)  # other readers may overlap
    try:
        cache = {}
        loaded = {name: models.load(name, cache)[0] for name in models.names}
        paths = {name: [os.path.relpath(p, models.path)
                        if _inside(p, models.path) else p
                        for p in models.files(name)] for name in loaded}
        data = measure(loaded, accuracy={r["name"]: r.get("accuracy")
                                         for r in rows},
                       labels={r["name"]: r["label"] for r in rows},
                       paths=paths, root=models.path, repeats=repeats)
        write(models.path, data)
    finally:
        lock.release()
    return data


def _inside(path, folder):
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def write(directory, data):
    """Writes `data` as `DIRECTORY/tradeoff.json`, atomically."""
    files.write_json_atomically(
        os.path.join(os.fspath(directory), TRADEOFF_FILE), data)


def read_matching(directory):
    """A run's `tradeoff.json`, if it still describes its model files.

    Args:
        directory: The run's directory; the files' paths are relative to
            it (or absolute).

    Returns:
        The data, or None: no file, a damaged one, or a model file that is
        gone or has changed since it was measured.
    """
    directory = os.fspath(directory)
    try:
        data = files.read_json(os.path.join(directory, TRADEOFF_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("rows"):
        return None
    for row in data["rows"]:
        if not row.get("files"):
            return None
        for path, digest in row["files"].items():
            path = os.path.join(directory, path)
            if not os.path.isfile(path) or files.sha256_file(path) != digest:
                return None
    return data


def _count(value):
    if value is None:
        return ""
    for limit, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if value >= limit:
            return f"{value / limit:.3g}{unit}"
    return str(int(value))


def _megabytes(value):
    return "" if value is None else f"{value / 1e6:.2f} MB"


def markdown_table(data, digits=4):
    """The trade-off as a Markdown table (a row per model), and its machine.

    Args:
        data: What `measure` returns (or `tradeoff.json` holds).
        digits: Decimals of the accuracy.

    Returns:
        The table, then a line naming the machine and how it measured.
    """
    small, large = data.get("batch_sizes") or BATCH_SIZES
    lines = [
        f"| Model | Parameters | Size on disk | MACs / sample | Latency, "
        f"batch {small} | Throughput, batch {large} | Test accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        accuracy = row.get("accuracy")
        lines.append("| " + " | ".join([
            row["label"], f"{row['params']:,}", _megabytes(row["size_bytes"]),
            _count(row.get("macs")), f"{row['latency_ms']:.3g} ms",
            f"{row['throughput']:,.0f} /s",
            "" if accuracy is None else f"{accuracy:.{digits}f}",
        ]) + " |")
    return "\n".join(lines) + "\n\n" + describe_machine(data)


def describe_machine(data):
    """One line: where and how the speeds were measured."""
    found = data.get("machine") or {}
    cores, threads = found.get("cores"), found.get("threads")
    return (f"Measured on {found.get('cpu', 'an unknown CPU')} ({cores} "
            f"core{'s' if cores != 1 else ''}) with TensorFlow "
            f"{found.get('tensorflow', '?')}, {threads} thread"
            f"{'s' if threads != 1 else ''} per op: medians of "
            f"{data.get('repeats')} interleaved repeats, milliseconds per "
            "sample at batch 1 and samples per second at batch 64.")

