"""A generated set's decoded images, kept beside it in one ``.npy`` file per split.

`xvol_lab.data.images.DecodedImageDataset` decodes every PNG of a set in each process that trains
on it: 0.7 s for shapes-side's 7000 images on a quiet core, paid again by every seed of a study (one process
each) and by the study's measurement of the trained network. The first process writes the decoded
array to ``<set folder>/.decoded/<key>.npy`` (atomically, with the umask's mode); later ones load
it in milliseconds. The key hashes every file's name, size and modification time, so an image
rewritten in place gives a new key and a stale array is never read. A folder that cannot be
written (a shared read-only copy) only costs the decoding.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from xvol_lab.atomic import atomic_path, dir_mode

log = logging.getLogger(__name__)

CACHE_DIR = ".decoded"


def cache_key(samples: Sequence[tuple[Path, int]], folder: Path) -> str | None:
    """A hash of each sample's path (relative to `folder`), size and modification time, in order;
    None when a file cannot be looked at (decoding it names it)."""
    digest = hashlib.sha256()
    for path, _ in samples:
        try:
            st = os.stat(path)
        except OSError:
            return None
        name = os.path.relpath(path, folder)
        digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def load_or_decode(samples: Sequence[tuple[Path, int]], folder: Path,
                   decode: Callable[[Sequence[tuple[Path, int]]], np.ndarray]) -> np.ndarray:
    """The images of `samples` as `decode` returns them (N, H, W, 3 uint8): read from `folder`'s
    cache when it holds them, else decoded and stored there for the next process."""
    key = cache_key(samples, folder)
    if key is None:
        return decode(samples)
    path = Path(folder) / CACHE_DIR / f"{key}.npy"
    try:
        images = np.load(path, allow_pickle=False)
        if images.dtype == np.uint8 and len(images) == len(samples):
            return images
        log.warning("%s: %s uint8 images expected, found %s %s; decoding again", path, len(samples),
                    images.dtype, images.shape)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); decoding again", path, err)
    images = decode(samples)
    try:
        path.parent.mkdir(mode=dir_mode(), exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
    except OSError as err:
        log.info("%s: not written (%s); the images are decoded in each process", path, err)
    return images


__all__ = ["CACHE_DIR", "cache_key", "load_or_decode"]
