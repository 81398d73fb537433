"""
The identity of a run for its resume check: run settings described as plain data, and a digest of the training
arrays.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

_NOT_SETTINGS = frozenset({"verbose", "training", "batch_size", "history", "global_step"})


def describe_setting(value: Any, depth: int = 0) -> Any:
    """
    A setting as plain data for the resume fingerprint: numbers, strings and containers as they are (numpy scalars
    as Python numbers, small arrays as lists), tensors by shape, other objects by type and, two levels deep, their
    public non-callable attributes (an attack's eps, eps_step, random_eps, decay, ...; a loss's label_smoothing).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [describe_setting(v, depth) for v in value]
    if isinstance(value, dict):
        return {str(k): describe_setting(v, depth) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}:{data_digest(value)}"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    described: dict[str, Any] = {"type": f"{type(value).__module__}.{type(value).__qualname__}"}
    if isinstance(value, torch.optim.Optimizer):  # its state changes every step: type and options only
        described["defaults"] = describe_setting(value.defaults, depth + 1)
        return described
    if depth >= 2 or isinstance(value, torch.nn.Module) and depth >= 1:
        return described
    for key, item in sorted(getattr(value, "__dict__", {}).items()):
        if key.startswith("_") or key in _NOT_SETTINGS or callable(item) and not isinstance(item, torch.nn.Module):
            continue
        if isinstance(item, torch.nn.Module | torch.optim.Optimizer) or key in ("estimator", "classifier", "model"):
            continue  # the model itself is checked by its weights
        described[key] = describe_setting(item, depth + 1)
    return described


def data_digest(*arrays: np.ndarray) -> str:
    """
    A BLAKE2b digest of arrays' dtypes, shapes and bytes: the training data's identity in a checkpoint.

    :param arrays: The arrays (e.g. ``x``, ``y``).
    :return: Hex digest.
    """
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8).data if array.size else b"")
    return digest.hexdigest()
