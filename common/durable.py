"""Files that survive a crash or a full disk: writes that fail with a message naming the file, fsync of
files and folders (a rename is durable only once its folder is synced), and size + sha256 digests for
checkpoint manifests (cluster/checkpoints.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or one on disk is incomplete or damaged; the message names the file."""


def write_file(path: Path, write: Callable[[Path], object]) -> dict:
    """`write(path)`, then fsync it; returns its digest. A failure (a full disk, a file-size limit, a
    read-only mount) raises CheckpointError naming the file and the cause. safetensors reports I/O
    errors as its own SafetensorError, not OSError, hence the broad catch, narrowed to the write."""
    try:
        write(path)
        fsync_file(path)
    except Exception as err:
        raise CheckpointError(f"writing {path} failed: {describe(err)}") from err
    return file_digest(path)


def write_json(path: Path, obj) -> dict:
    return write_file(path, lambda p: p.write_text(json.dumps(obj, indent=2)))


def describe(err: BaseException) -> str:
    """The cause of a failed write in a few words: the OS's message (`File too large`, `No space left on
    device`) rather than a traceback."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (files created or renamed into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: Path) -> dict:
    """{"size": bytes, "sha256": hex} of a file, read in 1 MB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}
