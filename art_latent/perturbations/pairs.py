"""Pairs ``(x, x_pert)`` over several budgets: the fine-tuning set of HLDR and the feature-guided denoiser."""

from __future__ import annotations

import torch

from art_latent.perturbations.base import PerturbationSource

__all__ = ["budget_pairs"]


def budget_pairs(
    source: PerturbationSource,
    x: torch.Tensor,
    y: torch.Tensor,
    budgets: tuple[float, ...],
    noise: PerturbationSource | None = None,
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """
    Pairs ``(x, x_pert)`` for every budget in `budgets` (and one noise pair per sample with `noise`): the fine-tuning
    set of paper 000 (HLDR and the feature-guided denoiser train on it).

    :param source: Makes the perturbed inputs; called with per-sample budgets, `batch_size` rows at a time.
    :param x: Benign inputs on the device.
    :param y: Class indices.
    :param budgets: The budgets; 0 gives the benign pair ``(x, x)``.
    :param noise: Adds ``len(x)`` noise pairs after the budget pairs when given.
    :param batch_size: Rows per call of the source.
    :return: ``{"x", "x_pair", "y", "eps"}``, grouped by budget then the noise pairs; ``eps`` is each pair's budget
             (``-1`` for a noise pair).
    """
    n = len(x)
    # The budgets stay on the host for the sources (which rows are budget 0 is then known without a device
    # synchronisation) and are copied to the device once, without blocking.
    eps = torch.tensor(budgets, dtype=torch.float64).repeat_interleave(n)
    x_rep = x.repeat(len(budgets), *([1] * (x.ndim - 1)))
    y_rep = y.repeat(len(budgets))
    pairs = [
        source.generate(x_rep[begin : begin + batch_size], y_rep[begin : begin + batch_size],
                        eps=eps[begin : begin + batch_size])
        for begin in range(0, len(x_rep), batch_size)
    ]
    if noise is not None:
        x_rep, y_rep = torch.cat([x_rep, x]), torch.cat([y_rep, y])
        pairs.append(noise.generate(x, y))
        eps = torch.cat([eps, torch.full((n,), -1.0, dtype=eps.dtype)])
    return {"x": x_rep, "x_pair": torch.cat(pairs).detach(), "y": y_rep,
            "eps": eps.to(device=x.device, dtype=x.dtype, non_blocking=True)}
