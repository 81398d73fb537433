"""
Reading and writing files safely: atomically (a temporary file renamed over the destination), only inside a given
directory, and without running code from what is read.

Every file art_latent writes goes through :func:`atomic_write`, :func:`atomic_path`, :func:`write_json` or
:func:`save_figure`: an interrupted write leaves the previous file intact, and a destination that is a symbolic link
is replaced, never followed. Every ``torch.save`` file it reads goes through :func:`safe_load`
(``torch.load(weights_only=True)``). :func:`inside` checks that a name read from a file cannot lead a write out of its
directory (``"x/../../.."``, absolute paths, symbolic links on the way).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TMP_SUFFIX", "atomic_path", "atomic_write", "fsync_directory", "inside", "remove_stale_temporaries",
           "json_safe", "safe_load", "save_figure", "sha256_file", "unpickling_reason", "write_json"]

#: Suffix of the temporary files of :func:`atomic_path` (``.<name>.<random>.tmp`` next to the destination).
TMP_SUFFIX = ".tmp"


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """
    ``root / parts``, refused unless it stays inside `root` with no symbolic link on the way.

    :param root: The directory every output must stay in.
    :param parts: Relative path components (names read from files, e.g. a pair-set name).
    :return: The path.
    :raises ValueError: If a part is empty, absolute or ``..``, or a component below `root` is a symbolic link.
    """
    base = Path(root)
    path = base
    for part in parts:
        pieces = Path(part).parts
        if not part or Path(part).is_absolute() or any(p in ("..", "") for p in pieces):
            raise ValueError(f"Refusing the output name {part!r}: it must be a relative name inside {base}.")
        for piece in pieces:
            path = path / piece
            if path.is_symlink():
                raise ValueError(f"Refusing to write through the symbolic link {path}: outputs stay inside {base}.")
    if base.is_symlink():
        logger.debug("The output directory %s is a symbolic link; writing inside its target.", base)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """
    Yield a temporary path next to `path` to write to; on success it is renamed over `path` (a symbolic link at
    `path` is replaced, not followed), on failure it is removed and `path` is unchanged.

    :param path: The destination.
    :param fsync: Flush the file and its directory to disk before returning (checkpoints; off for re-creatable
                  outputs such as figures).
    :return: A context manager yielding the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as file:
                os.fsync(file.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_directory(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes, fsync: bool = True) -> Path:
    """
    Write `data` to `path` atomically (see :func:`atomic_path`).

    :param path: The destination.
    :param data: Text (written as UTF-8) or bytes.
    :param fsync: See :func:`atomic_path`.
    :return: The path.
    """
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def fsync_directory(directory: str | os.PathLike) -> None:
    """
    Flush a directory's entries (a rename in it) to disk; a no-op where directories cannot be opened (Windows).

    :param directory: The directory.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """
    Delete the temporary files that :func:`atomic_path` left in `directory` for the destinations `names` when its
    process was killed mid-write (``kill -9``, a power cut): ``.<name>*.tmp`` (and ``<name>.*.tmp``, the names of
    earlier versions).

    :param directory: The directory.
    :param names: The destination file names (or name prefixes) whose temporaries to delete (e.g.
                  ``("checkpoint.pt",)``).
    :return: The deleted paths.
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for name in names:
        for legacy in (f"{name}.*{TMP_SUFFIX}", f".{name}*{TMP_SUFFIX}"):
            for stale in directory.glob(legacy):
                if stale.is_file() and not stale.is_symlink():
                    size = stale.stat().st_size
                    stale.unlink()
                    removed.append(stale)
                    logger.warning("Removed %s (%d bytes): a write interrupted by a killed process.", stale, size)
    return removed


def save_figure(figure: object, path: str | os.PathLike, dpi: int = 120) -> Path:
    """
    Save a matplotlib figure as PNG atomically (see :func:`atomic_path`).

    :param figure: The ``matplotlib.figure.Figure``.
    :param path: The destination.
    :param dpi: Resolution.
    :return: The path.
    """
    with atomic_path(path, fsync=False) as tmp:
        figure.savefig(os.fspath(tmp), dpi=dpi, format="png", bbox_inches="tight")  # type: ignore[attr-defined]
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """
    The SHA-256 of a file's bytes, read in blocks (checked before a file is deserialized).

    :param path: The file.
    :return: Hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def unpickling_reason(error: BaseException) -> str:
    """
    The useful line of a ``torch.load(weights_only=True)`` error (which global it refused), without torch's advice to
    load the file unsafely.

    :param error: The exception.
    :return: One line.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.split(". Please use")[0].replace("WeightsUnpickler error: ", "")
    return lines[0] if lines else type(error).__name__


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """
    Read a ``torch.save`` file with ``torch.load(weights_only=True)``: tensors, containers and plain values only, never
    code from the file.

    :param path: The file.
    :param map_location: Where to put the tensors (``torch.load``'s argument).
    :return: What the file holds.
    :raises ValueError: If torch refuses to read it safely (or it is not a ``torch.save`` file); the message names
                        the refused global (:func:`unpickling_reason`).
    :raises FileNotFoundError: If it does not exist.
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # any unpickling failure: not a file we can read safely
        raise ValueError(f"{os.fspath(path)} cannot be read safely (torch.load with weights_only=True refused it: "
                         f"{unpickling_reason(error)}).") from error


def json_safe(value: Any) -> Any:
    """
    Recursively turn numpy/torch scalars and arrays into Python numbers and lists, and non-finite floats into
    ``None``.

    :param value: Data.
    :return: The same data, JSON-serialisable.
    """
    import numpy as np

    torch = sys.modules.get("torch")  # no tensor exists unless torch is imported
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if torch is not None and isinstance(value, torch.Tensor):
        return json_safe(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """
    Write `data` as indented JSON, atomically (see :func:`atomic_path`): an interrupted write never leaves a truncated
    file. Non-finite floats are written as ``null``.

    :param data: JSON-serialisable data (numpy and torch scalars are converted, see :func:`json_safe`).
    :param path: Destination.
    :return: The path.
    """
    return atomic_write(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
