"""Files written whole or not at all, and read back with clear errors.

Every file kdtrain writes goes to a temporary name beside its target, is
flushed to disk, and is renamed over the target: a crash at any instruction
leaves the old file or the whole new one, plus at worst a temporary file
that `is_temporary` recognizes and the next writer removes.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil

import numpy as np

from kdtrain.faults import fault_point

_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp(\.[A-Za-z0-9]+)?$")


class DamagedFileError(ValueError):
    """A file kdtrain wrote cannot be read back (truncated, edited, not JSON)."""


def json_default(value):
    """`value` in a form JSON can hold (NumPy values, tuples, sets)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return repr(value)


def temporary_path(path, suffix=""):
    """The temporary name `path` is written under: `.NAME.PID.tmp[SUFFIX]`."""
    directory, base = os.path.split(os.fspath(path))
    return os.path.join(directory, f".{base}.{os.getpid()}.tmp{suffix}")


def is_temporary(name):
    """Whether a file name is one of `temporary_path`'s."""
    return bool(_TEMPORARY.match(name))


def remove(path):
    """Removes a file or a folder tree, if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def fsync_path(path):
    """Flushes a file or a folder entry to disk (best effort for folders)."""
    flags = os.O_RDONLY
    if os.path.isdir(path):
        flags |= getattr(os, "O_DIRECTORY", 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    except OSError:  # Some file systems cannot sync a folder.
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def replacing(path, suffix="", fault=None):
    """Yields a temporary path to write; renames it to `path` on success.

    Args:
        path: The final file or folder.
        suffix: Ending of the temporary name (`".keras"` for Keras' saver).
        fault: Optional fault point reached just before the rename.
    """
    path = os.fspath(path)
    temporary = temporary_path(path, suffix)
    remove(temporary)
    try:
        yield temporary
        if os.path.isdir(temporary):
            for root, _, names in os.walk(temporary):
                for name in names:
                    fsync_path(os.path.join(root, name))
        fsync_path(temporary)
        if fault:
            fault_point(fault)
        os.replace(temporary, path)
        fsync_path(os.path.dirname(path) or ".")
    finally:
        remove(temporary)


def write_atomically(path, write, fault=None):
    """Calls `write(file)` on a temporary binary file renamed to `path`."""
    with replacing(path, fault=fault) as temporary:
        with open(temporary, "wb") as file:
            write(file)


def write_bytes_atomically(path, content, fault=None):
    """Writes `content` (bytes) to `path` through a temporary file."""
    write_atomically(path, lambda file: file.write(content), fault)


def write_text_atomically(path, text, fault=None):
    """Writes `text` (UTF-8) to `path` through a temporary file."""
    write_bytes_atomically(path, text.encode(), fault)


def to_json(value):
    """`value` as kdtrain's JSON text (sorted keys, NumPy values allowed)."""
    return json.dumps(value, indent=2, sort_keys=True, default=json_default)


def write_json_atomically(path, value, fault=None):
    """Writes `value` as JSON to `path` through a temporary file."""
    write_text_atomically(path, to_json(value), fault)


def save_model_atomically(model, path, fault=None):
    """Saves `model` as a `.keras` file through a temporary file."""
    with replacing(path, suffix=".keras", fault=fault) as temporary:
        model.save(temporary)


def sha256_file(path):
    """The SHA-256 of a file's bytes, as hexadecimal."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path):
    """The value of a JSON file kdtrain wrote.

    Raises:
        FileNotFoundError: If there is no such file.
        DamagedFileError: If it is not valid JSON, naming the file.
    """
    try:
        with open(path, "rb") as file:
            return json.loads(file.read().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedFileError(
            f"{os.fspath(path)} is damaged: it is not valid JSON ({error}). "
            "It was changed after kdtrain wrote it."
        ) from None


def load_model_file(path, argument=None):
    """Loads a `.keras` file with Keras' safe mode on.

    Args:
        path: The file.
        argument: How the user named it (e.g. `"--teacher"`), for messages.

    Returns:
        The `keras.Model`, uncompiled.

    Raises:
        ValueError: No such file, not a `.keras` archive, or a model that
            safe mode refuses; the message names the file.
    """
    import zipfile

    import keras

    # kdtrain's own model classes, registered for deserialization (a fresh
    # `kdtrain evaluate` process has imported none of them yet).
    import kdtrain.ensemble  # noqa: F401
    import kdtrain.models.registry  # noqa: F401

    where = f"{argument} {path}" if argument else os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{where}: no such file.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{where} is not a .keras archive (a .keras file is a zip "
            "archive; this one is not). Save models with "
            "model.save('name.keras')."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any loading failure
        raise ValueError(
            f"{where} cannot be loaded with Keras' safe mode on "
            f"({type(error).__name__}: {error}). kdtrain never turns safe "
            "mode off: that would run code stored in the file."
        ) from error
