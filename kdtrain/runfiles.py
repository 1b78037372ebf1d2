"""Files of a run: written atomically (temp file, fsync, rename), read back."""

import contextlib
import json
import os

import numpy as np


def json_default(value):
    """`value` in a form JSON can hold (NumPy values, tuples, sets)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return repr(value)


@contextlib.contextmanager
def _renamed_to(path, temporary):
    """Yields `temporary` to write; renames it to `path`, or removes it."""
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_atomically(path, write):
    """Calls `write(file)` on a temporary binary file, renamed to `path`.

    The file is flushed to disk before the rename, so a crash leaves either
    the old `path` or the whole new one.
    """
    with _renamed_to(path, f"{path}.{os.getpid()}.tmp") as temporary:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomically(path, content):
    """Writes `content` (bytes) to `path` through a temporary file."""
    write_atomically(path, lambda f: f.write(content))


def write_text_atomically(path, text):
    """Writes `text` (UTF-8) to `path` through a temporary file."""
    write_bytes_atomically(path, text.encode())


def write_json_atomically(path, value):
    """Writes `value` as JSON to a temporary file, then renames it to `path`."""
    write_text_atomically(
        path, json.dumps(value, indent=2, sort_keys=True, default=json_default)
    )


def save_model_atomically(model, path):
    """Saves `model` to a temporary `.keras` file, then renames it to `path`."""
    directory, base = os.path.split(path)
    temporary = os.path.join(directory, f".{base}.{os.getpid()}.tmp.keras")
    with _renamed_to(path, temporary):
        model.save(temporary)


def read_json(path):
    """The value of the JSON file `path`."""
    with open(path) as f:
        return json.load(f)
