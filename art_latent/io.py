"""
Writing files safely: atomically (a temporary file renamed over the destination) and only inside a given directory.

Every file art_latent writes goes through :func:`atomic_write` or :func:`atomic_path`: an interrupted write leaves the
previous file intact, and a destination that is a symbolic link is replaced, never followed. :func:`inside` checks
that a name read from a file cannot lead a write out of its directory (``"x/../../.."``, absolute paths, symbolic
links on the way).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["TMP_SUFFIX", "atomic_path", "atomic_write", "fsync_directory", "inside", "remove_stale_temporaries",
           "save_figure", "sha256_file"]

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
