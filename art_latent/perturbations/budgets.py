"""
Budgets and random draws shared by the perturbation sources: per-sample budget tensors (validated on the host, or
used as they are on the device), broadcasting, seeded draws on any device.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

__all__ = ["Budget", "broadcastable", "device_budget", "make_generator", "on_device", "per_sample_budget", "sample",
           "scalar"]

#: A budget override: one float for the batch, or a tensor with one budget per sample.
Budget = float | torch.Tensor


def per_sample_budget(eps: Budget, batch_size: int) -> torch.Tensor:
    """
    Turn a budget override into a float64 CPU tensor of shape ``(B,)`` and validate it.

    :param eps: A float or a tensor with one element or `batch_size` elements.
    :param batch_size: Number of samples in the batch.
    :return: Per-sample budgets.
    """
    if isinstance(eps, torch.Tensor):
        budgets = eps.detach().to("cpu", torch.float64).reshape(-1)
        if budgets.numel() == 1:
            budgets = budgets.expand(batch_size)
        elif budgets.numel() != batch_size:
            raise ValueError(f"A per-sample `eps` needs {batch_size} values (one per sample), got {budgets.numel()}.")
    elif isinstance(eps, (int, float, np.floating, np.integer)):
        budgets = torch.full((batch_size,), float(eps), dtype=torch.float64)
    else:
        raise TypeError(f"`eps` must be a float or a torch.Tensor, got {type(eps).__name__}.")
    if not torch.isfinite(budgets).all() or (budgets < 0).any():
        raise ValueError("Perturbation budgets `eps` must be finite and non-negative.")
    return budgets


def on_device(eps: Budget | None) -> bool:
    """
    Whether `eps` is a tensor on an accelerator: reading it on the host (to validate it, or to skip its zero rows)
    would synchronise the device, so it is used as it is.
    """
    return isinstance(eps, torch.Tensor) and eps.device.type != "cpu"


def device_budget(eps: torch.Tensor, batch_size: int) -> torch.Tensor:
    """
    A per-sample budget tensor already on the device, as float64 ``(B,)``; its shape is checked, not its values (that
    would synchronise).

    :param eps: One value or `batch_size` values.
    :param batch_size: Number of samples in the batch.
    :return: Per-sample budgets on `eps`'s device.
    """
    budgets = eps.detach().to(torch.float64).reshape(-1)
    if budgets.numel() == 1:
        return budgets.expand(batch_size)
    if budgets.numel() != batch_size:
        raise ValueError(f"A per-sample `eps` needs {batch_size} values (one per sample), got {budgets.numel()}.")
    return budgets


def broadcastable(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """
    Reshape per-sample values ``(B,)`` to ``(B, 1, ..., 1)`` in the dtype and on the device of `like` (a host tensor
    is copied without blocking: no device synchronisation).

    :param values: One value per sample.
    :param like: The batch the values broadcast against.
    :return: The reshaped values.
    """
    return values.to(device=like.device, dtype=like.dtype, non_blocking=True).reshape(-1, *([1] * (like.ndim - 1)))


def sample(
    kind: Literal["rand", "randn"], shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """
    Draw uniform [0, 1) or standard normal values on `like`'s device, from `generator` when one is given.

    :param kind: ``"rand"`` or ``"randn"``.
    :param shape: Shape of the draw.
    :param like: Tensor whose device and dtype the result takes.
    :param generator: Optional generator; it may live on another device than `like`.
    :return: The random values.
    """
    sampler = torch.rand if kind == "rand" else torch.randn
    if generator is None:
        return sampler(shape, dtype=like.dtype, device=like.device)
    values = sampler(shape, dtype=like.dtype, device=generator.device, generator=generator)
    return values.to(like.device, non_blocking=True)


def make_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """
    Accept a generator, a seed for a fresh CPU generator, or `None`.

    :param generator: A ``torch.Generator``, an integer seed, or `None` for torch's global generator.
    :return: The generator to use.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"`generator` must be a torch.Generator, an int seed or None, got {type(generator).__name__}.")


def scalar(value: Any) -> float | None:
    """
    Return `value` as a float when it is a scalar (or a one-element array), else `None`.

    :param value: Anything.
    :return: The float or `None`.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(-1)[0])
    return None
