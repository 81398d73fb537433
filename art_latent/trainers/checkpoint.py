"""
Checkpoint files of :class:`~art_latent.trainers.base.LatentTrainer`: atomic writes, safe loading, RNG states.

A checkpoint holds only tensors and plain Python containers and numbers, so it is read with
:func:`art_latent.io.safe_load` (``torch.load(weights_only=True)``): loading a checkpoint never runs code from the
file.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from art_latent.io import atomic_path, safe_load, sha256_file, unpickling_reason
from art_latent.trainers.interrupts import deferred_sigterm

logger = logging.getLogger(__name__)

#: Bumped when the layout of the checkpoint dict changes (3: checksum, fingerprint, write-once state file).
FORMAT_VERSION = 3
#: Formats :func:`load` reads (2: no checksum, no fingerprint).
READABLE_FORMATS = (2, 3)
#: The latest complete checkpoint in ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
#: Written when training stops on a non-finite loss or gradient: the last good state.
EMERGENCY_NAME = "emergency.pt"
#: Prefix of the write-once per-sample state files (see :func:`save_blob`).
STATE_PREFIX = "per_sample_state"


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


def content_digest(value: Any) -> str:
    """
    A BLAKE2b digest of a checkpoint's content: every key, number, string and tensor (dtype, shape and bytes), in
    order. Stored in the checkpoint and compared on load, it detects a flipped bit anywhere in the data.

    :param value: The checkpoint dict (as :func:`plain` returns it).
    :return: Hex digest.
    """
    digest = hashlib.blake2b(digest_size=32)

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(item, dict):
            digest.update(f"D{len(item)}".encode())
            for key, entry in item.items():
                feed(key)
                feed(entry)
        elif isinstance(item, list | tuple):
            digest.update(f"L{len(item)}".encode())
            for entry in item:
                feed(entry)
        else:
            digest.update(f"{type(item).__name__}:{item!r};".encode())

    feed(value)
    return digest.hexdigest()


def cpu_copy(value: Any) -> Any:
    """
    A copy of a state (nested containers of tensors) with every tensor cloned to the CPU: a backup that later
    in-place updates of the live state cannot change.

    :param value: A ``state_dict`` or nested containers.
    :return: The copy (dict subclasses and a module state_dict's ``_metadata`` kept).
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        items = ((k, cpu_copy(v)) for k, v in value.items())
        try:
            result = type(value)(items)
        except TypeError:
            result = dict(items)
        if hasattr(value, "_metadata"):
            result._metadata = copy.deepcopy(value._metadata)  # type: ignore[attr-defined]
        return result
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(v) for v in value)
    return copy.deepcopy(value)


def _save(state: Any, path: Path) -> None:
    try:
        torch.save(state, path)
    except RuntimeError as error:  # torch's zip writer reports a full disk (ENOSPC, EFBIG) as a RuntimeError
        raise OSError(f"Writing {path} failed (disk full or file too large?): {error}") from error


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """
    Write `state` to `path` through a temporary file and a rename: a crash mid-write leaves the previous file
    intact, and a SIGTERM during the write takes effect once the file is complete. A checksum of the content is
    stored with it (see :func:`load`).

    :param state: The checkpoint dict.
    :param path: The destination file.
    """
    state = plain(state)
    state["checksum"] = content_digest(state)
    with deferred_sigterm(), atomic_path(path) as tmp:
        _save(state, tmp)


def save_blob(tensors: dict[str, torch.Tensor], directory: Path) -> dict[str, Any]:
    """
    Write per-sample tensors that never change during a run (precomputed pairs, fixed noise) once, to their own
    file ``per_sample_state-<sha256 prefix>.pt``; checkpoints refer to it by name and SHA-256 instead of holding
    (and rewriting) them every epoch.

    :param tensors: The tensors (moved to the CPU for writing).
    :param directory: The checkpoint directory.
    :return: ``{"file", "sha256", "keys"}``, stored in the checkpoints.
    """
    state = {key: value.detach().cpu() for key, value in tensors.items()}
    name = _blob_name(state)
    with deferred_sigterm(), atomic_path(directory / name) as tmp:
        _save(state, tmp)
        sha = sha256_file(tmp)
    return {"file": name, "sha256": sha, "keys": sorted(state)}


def _blob_name(state: dict[str, torch.Tensor]) -> str:
    return f"{STATE_PREFIX}-{content_digest(state)[:16]}.pt"


def blob_matches(reference: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> bool:
    """
    Whether the file `reference` names exists and holds `tensors` (compared by content digest, not re-read).

    :param reference: What :func:`save_blob` returned.
    :param tensors: The method's current write-once tensors.
    :param directory: The checkpoint directory.
    :return: ``True`` when nothing needs to be written.
    """
    name = reference.get("file")
    return (directory / str(name)).is_file() and name == _blob_name(
        {key: value.detach().cpu() for key, value in tensors.items()})


def load_blob(reference: dict[str, Any], directory: Path, map_location: torch.device | str | None = None
              ) -> dict[str, torch.Tensor]:
    """
    Read what :func:`save_blob` wrote, after checking the file's SHA-256 (before anything is deserialized).

    :param reference: What :func:`save_blob` returned (from a checkpoint).
    :param directory: The checkpoint directory.
    :param map_location: Where to put the tensors.
    :return: The tensors.
    :raises ValueError: If the file is missing, its name is not one :func:`save_blob` writes, or its hash differs.
    """
    name = str(reference.get("file", ""))
    if not name.startswith(f"{STATE_PREFIX}-") or "/" in name or "\\" in name or ".." in name:
        raise ValueError(f"The checkpoint names an unexpected per-sample state file {name!r}.")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"The checkpoint's per-sample state file {path} is missing.")
    if sha256_file(path) != reference.get("sha256"):
        raise ValueError(f"{path} does not match the SHA-256 recorded in the checkpoint: it is corrupted or was "
                         "replaced. Start a new run (another checkpoint_dir or resume=False).")
    state = safe_load(path, map_location=map_location)  # ValueError with a one-line message
    if not isinstance(state, dict) or sorted(state) != list(reference.get("keys", [])):
        raise ValueError(f"{path} does not hold the per-sample tensors {reference.get('keys')}.")
    return state


def remove_unreferenced_blobs(directory: Path) -> None:
    """
    Delete ``per_sample_state-*.pt`` files that neither ``checkpoint.pt`` nor ``emergency.pt`` refers to (left by
    an earlier run in the directory, or by a run killed between writing its state file and its checkpoint).

    :param directory: The checkpoint directory.
    """
    keep = set()
    for name in (CHECKPOINT_NAME, EMERGENCY_NAME):
        path = directory / name
        if path.is_file():
            try:
                state = load(path)
            except ValueError:
                return  # an unreadable checkpoint: leave everything for the user to inspect
            if isinstance(state.get("write_once"), dict):
                keep.add(state["write_once"].get("file"))
    for path in directory.glob(f"{STATE_PREFIX}-*.pt"):
        if path.name not in keep and path.is_file() and not path.is_symlink():
            path.unlink()
            logger.info("Removed %s: no checkpoint refers to it.", path)


def load(path: Path, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """
    Read a checkpoint with :func:`art_latent.io.safe_load` (``torch.load(weights_only=True)``) and verify its
    checksum.

    :param path: The checkpoint file.
    :param map_location: Where to put the tensors.
    :return: The checkpoint dict.
    :raises ValueError: If the file is not an art_latent checkpoint of this format, or its content does not match
                        its checksum (a corrupted file).
    """
    try:
        state = safe_load(path, map_location=map_location)
    except (FileNotFoundError, ValueError) as error:  # safe_load's ValueError wraps torch's error
        reason = unpickling_reason(error.__cause__ or error)
        raise ValueError(f"Cannot read checkpoint {path} safely (weights_only=True): {reason}") from error
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not an art_latent checkpoint of format {FORMAT_VERSION} (found {found!r}).")
    checksum = state.pop("checksum", None)
    if state["format"] < 3 and ("fingerprint" in state or checksum is not None):
        raise ValueError(f"{path} is corrupted: it claims format {state['format']} but has the entries of format 3.")
    if (state["format"] >= 3 or checksum is not None) and checksum != content_digest(state):
        raise ValueError(f"{path} is corrupted: its content does not match its checksum. Resume from an intact "
                         "checkpoint or start a new run.")
    return state
