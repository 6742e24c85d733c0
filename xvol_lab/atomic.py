"""Writing files atomically, with the usual permissions: the one helper for every file the lab writes.

A file is written to a temporary file in its own folder, flushed to disk and renamed over the
target (`os.replace`), so a reader sees the old file or the new one, never half of one. Python's
`tempfile` makes temporaries private (files 0600, folders 0700); on a shared cluster a
colleague's worker must read them, so they get the mode a plain ``open()``/``mkdir()`` would give
under the current umask (0644 and 0755 under umask 022).

Folders filled in several steps (a generated dataset, a report) are staged with `temp_dir` beside
their target and renamed into place by the caller; files inside such a folder are written with
plain ``open()``, since nothing can see them before the folder is renamed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "current_umask", "dir_mode", "file_mode", "temp_dir", "write_bytes", "write_text"]


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the fast path above)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file under the current umask (0o644 under 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode of a new folder under the current umask (0o755 under 022)."""
    return 0o777 & ~current_umask()


def _fsync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder: the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes a file name (``torch.save``,
    ``savefig``); on a clean exit it is synced and renamed to `path`, on an error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())  # mkstemp made it 0600
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str, *, newline: str | None = None) -> None:
    """Write `text` to `path` atomically (``newline=""`` keeps line endings as given, for CSV)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline=newline) as f:
        f.write(text)


def temp_dir(target: str | Path) -> Path:
    """A new empty folder beside `target`, named ``.<name>.tmp-*``, with the usual folder mode;
    the caller fills it and renames it to `target` (or removes it on failure)."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, dir_mode())  # mkdtemp made it 0700
    return tmp
