"""Files the package writes (tuned configs, benchmark CSVs, figures): atomically, with the
permissions the user's umask gives any new file, and under a lock that leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, IO


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc): setting
    and restoring it would briefly give other threads' new files a umask of 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def locked_dir(path: str):
    """An exclusive advisory lock on a folder (flock on the folder itself), created if needed.

    Concurrent writers of files in the folder serialise on it; no lock file is left behind."""
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - no flock on this platform
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> str:
    """Write ``path`` through a temporary file in the same folder and an atomic rename, so a
    reader never sees half a file; the result has mode 0666 & ~umask, as ``open`` would give."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
