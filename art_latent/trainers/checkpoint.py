"""
Checkpoint files of :class:`~art_latent.trainers.base.LatentTrainer`: atomic writes, safe loading, RNG states.

A checkpoint holds only tensors and plain Python containers and numbers, so it is read with
``torch.load(weights_only=True)``: loading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Bumped when the layout of the checkpoint dict changes incompatibly.
FORMAT_VERSION = 2
#: The latest complete checkpoint in ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
#: Written when training stops on a non-finite loss or gradient: the last good state.
EMERGENCY_NAME = "emergency.pt"


def rng_state() -> dict[str, Any]:
    """
    The states of every random number generator training draws from: torch (CPU and each CUDA device), numpy's
    global generator (ART's random initialisations) and Python's ``random``.

    :return: A dict of tensors and plain values (loadable with ``weights_only=True``).
    """
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """
    Restore what :func:`rng_state` returned.

    :param state: The saved states.
    """
    torch.set_rng_state(state["torch"].cpu())
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuples(value: Any) -> Any:
    # random.setstate needs tuples; a serialiser may hand back lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def plain(value: Any) -> Any:
    """
    Convert numpy scalars and arrays inside containers to Python numbers and tensors (``weights_only``-loadable).

    :param value: A history record, a method state, ...
    :return: The same structure with only tensors, Python numbers, strings, ``None`` and containers.
    """
    if isinstance(value, dict):
        items = ((k, plain(v)) for k, v in value.items())
        try:  # keep dict subclasses (OrderedDict, Counter): schedulers and state dicts rely on them
            result = type(value)(items)
        except TypeError:
            result = dict(items)
        if hasattr(value, "_metadata"):  # a module state_dict's version information
            result._metadata = value._metadata  # type: ignore[attr-defined]
        return result
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """
    Write `state` to `path` through a temporary file and a rename: a crash mid-write leaves the previous file intact.

    :param state: The checkpoint dict.
    :param path: The destination file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # unique per writer
    tmp = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(plain(state), file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename: a machine crash cannot leave a truncated file
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: Path, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """
    Read a checkpoint with ``torch.load(weights_only=True)``.

    :param path: The checkpoint file.
    :param map_location: Where to put the tensors.
    :return: The checkpoint dict.
    :raises ValueError: If the file is not an art_latent checkpoint of this format.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot read checkpoint {path} safely (weights_only=True): {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not an art_latent checkpoint of format {FORMAT_VERSION} (found {found!r}).")
    return state
