"""File modes for outputs written through temporaries (standard library only: the weight
hub uses it too, and must stay light)."""

from __future__ import annotations

import functools

__all__ = ["dir_mode", "file_mode"]


@functools.cache
def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def file_mode() -> int:
    """What ``open()`` would give a new file (0o666 minus the umask). ``tempfile.mkstemp``
    makes 0600 files, which other users, a shared cache or a web server could not read:
    files written through a temporary get this mode before they are renamed into place."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """What ``mkdir`` would give a new folder (0o777 minus the umask); ``tempfile.mkdtemp``
    makes 0700 folders."""
    return 0o777 & ~_umask()
