"""One writer per run directory: an advisory lock that dies with its holder.

`DirectoryLock` takes an exclusive `fcntl.flock` on `DIRECTORY/.kdtrain.lock`
and writes its PID there, so a second process is refused at once with the
holder's PID. The operating system releases the lock when the holder exits
or is killed, so a crashed run never leaves a directory locked. A reader
(`kdtrain evaluate`) takes it shared: readers may overlap, never with a
writer.
"""

import fcntl
import os

from kdtrain.chain.errors import DirectoryLocked
from kdtrain.chain.errors import RunDirectoryError

LOCK_FILE = ".kdtrain.lock"

# Locks this process holds: real path of the lock file -> [descriptor,
# depth]. A second `flock` on a new descriptor would conflict with our own,
# so nested users (the command line, then the runner) share one.
_HELD = {}


def _read_pid(descriptor):
    try:
        text = os.pread(descriptor, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _same_file(descriptor, path):
    try:
        held, named = os.fstat(descriptor), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


class DirectoryLock:
    """An exclusive lock on a run directory, re-entrant within a process.

    Args:
        directory: The run directory; created when the lock is taken.

    Example:

    ```python
    with DirectoryLock("runs/ban"):
        ...  # the only writer of runs/ban
    ```
    """

    def __init__(self, directory):
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, LOCK_FILE)
        self._depth = 0

    @property
    def _key(self):
        return os.path.realpath(self.path)

    def acquire(self, shared=False):
        """Takes the lock, or raises `DirectoryLocked` naming the holder.

        Args:
            shared: Take it for reading only: other readers may hold it
                too, a writer may not. Creates nothing; a directory
                without a lock file has no writer to wait for.

        Raises:
            DirectoryLocked: Another process holds it.
            RunDirectoryError: The directory cannot be created or written.
        """
        if self._key in _HELD:
            _HELD[self._key][1] += 1
            self._depth += 1
            return self
        while True:
            descriptor = self._open(shared)
            if descriptor is None:
                return self
            try:
                mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
                fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(descriptor)
                os.close(descriptor)
                raise self._locked(pid) from None
            # Locked a file that was replaced meanwhile: lock the new one.
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)
        try:
            if not shared:
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(descriptor)  # closing releases the lock
            raise
        _HELD[self._key] = [descriptor, 1]
        self._depth += 1
        return self

    def check(self):
        """Raises `DirectoryLocked` if another process writes the directory.

        Takes nothing and creates nothing: a quick test before slow work.
        """
        if self._key in _HELD or not os.path.exists(self.path):
            return
        try:
            descriptor = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked(_read_pid(descriptor)) from None
        finally:
            os.close(descriptor)

    def verify(self):
        """Raises unless this process still holds the directory's lock file.

        A lock file deleted or replaced while held would let another
        process take the directory: the writer stops before its next write.
        """
        held = _HELD.get(self._key)
        if held is None:
            return
        if not _same_file(held[0], self.path):
            raise RunDirectoryError(
                f"The lock file {self.path} was removed or replaced while "
                "this run held it, so another process may be writing the "
                "directory. Stopped before writing; check the directory, "
                "then run again.",
                self.directory,
            )

    def _locked(self, pid):
        holder = f"PID {pid}" if pid else "a process that just started"
        return DirectoryLocked(
            f"The run directory {self.directory} is in use by another "
            f"kdtrain process ({holder}): one writer at a time. Wait for "
            "it to finish, or stop it (a stopped or killed process "
            "releases the directory at once), or use {directory}.",
            self.directory,
            pid=pid,
        )

    def _open(self, shared):
        if shared:
            try:
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        try:
            os.makedirs(self.directory, exist_ok=True)
            if not os.access(self.directory, os.W_OK):
                raise PermissionError(13, "Permission denied")
            return os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as error:
            raise RunDirectoryError(
                f"Cannot write to the run directory {self.directory}: "
                f"{error.strerror or error} (it is read-only or not yours). "
                "Nothing was written; use {directory}.",
                self.directory,
            ) from None

    def release(self):
        """Releases one level of the lock; the last release unlocks."""
        if not self._depth:
            return
        self._depth -= 1
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self._key]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    @property
    def held(self):
        """Whether this process holds the lock."""
        return self._key in _HELD

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
