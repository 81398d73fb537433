"""
HLDR's latent disparity (paper 000, eq. 3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import cast

import torch

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("batch", "layer", "sample")
_TINY = 1e-12


def _sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Python's ``sum`` of a non-empty iterable of tensors (``0 + t`` is a tensor), typed as one."""
    return cast(torch.Tensor, sum(terms))


def _sqrt(squares: torch.Tensor) -> torch.Tensor:
    """``sqrt``, exact everywhere, that is 0 at 0 with a zero (not infinite) gradient there: identical pairs give 0."""
    positive = squares > 0
    # The inner where keeps sqrt's infinite derivative at 0 out of the graph; the outer one selects the exact 0.
    return torch.where(positive, torch.where(positive, squares, torch.ones_like(squares)).sqrt(), 0.0)


def _entry_norm(t: torch.Tensor, p: int) -> torch.Tensor:
    """Entry-wise p-norm of the whole tensor, p in {1, 2}."""
    if p == 1:
        return t.abs().sum()
    return _sqrt(t.square().sum())


def latent_disparity(
    clean: Sequence[torch.Tensor],
    perturbed: Sequence[torch.Tensor],
    normalization: str = "batch",
    p: int = 1,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    HLDR's latent disparity between the activations of benign and perturbed inputs (paper 000, eq. 3).

    With :math:`s_l(x)` the activation of layer :math:`l` and :math:`\|\cdot\|_p` the entry-wise p-norm:

    * ``"batch"`` (the paper and the authors' code, default): one ratio over the whole batch and all layers,
      :math:`\|[s_l(x) - s_l(x_a)]_{l,i}\|_p \,/\, \|[s_l(x)]_{l,i}\|_p`; for ``p=1`` exactly
      :math:`\sum_l |s_l(x) - s_l(x_a)| / \sum_l |s_l(x)|` with the sums over the batch;
    * ``"layer"``: the mean over layers of the per-layer ratio (each layer weighs the same, whatever its size);
    * ``"sample"``: the mean over samples of the per-sample ratio (all layers of one sample together).

    The gradient flows through both the numerator and the denominator (as in the authors' code).

    :param clean: Activations of the benign inputs, one tensor per layer, each ``(n, ...)``.
    :param perturbed: Activations of the perturbed inputs, same shapes.
    :param normalization: ``"batch"``, ``"layer"`` or ``"sample"``.
    :param p: 1 (L1, the paper) or 2 (L2).
    :param rows: When given, `perturbed` holds only these rows of the batch (indices into `clean`, on its device);
                 every other row is a pair whose perturbed activations equal the clean ones (HLDR's budget-0 pairs)
                 and adds nothing to the numerators. The value is that of the full ``perturbed``, without its copies.
    :return: A scalar tensor.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}.")
    if p not in (1, 2):
        raise ValueError(f"`p` must be 1 or 2, got {p!r}.")
    if len(clean) != len(perturbed) or not clean:
        raise ValueError(f"Need the same non-zero number of clean and perturbed layers, got {len(clean)} and "
                         f"{len(perturbed)}.")
    for a, b in zip(clean, perturbed, strict=True):
        if (a.shape if rows is None else (len(rows), *a.shape[1:])) != b.shape:
            raise ValueError(f"Clean and perturbed activations differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    n = len(clean[0])
    # Accumulate in float32 at least, so the disparity stays finite under bf16/fp16 autocast.
    clean = [a.float() if a.dtype in (torch.float16, torch.bfloat16) else a for a in clean]
    perturbed = [b.float() if b.dtype in (torch.float16, torch.bfloat16) else b for b in perturbed]
    # the clean rows the perturbed ones pair with (all of them without `rows`)
    paired = clean if rows is None else [a.index_select(0, rows) for a in clean]

    if normalization == "layer":
        ratios = [
            _entry_norm(a - b, p) / _entry_norm(c, p).clamp_min(_TINY)
            for a, b, c in zip(paired, perturbed, clean, strict=True)
        ]
        return torch.stack(ratios).mean()

    if normalization == "batch":
        if p == 1:
            num = _sum((a - b).abs().sum() for a, b in zip(paired, perturbed, strict=True))
            den = _sum(a.abs().sum() for a in clean)
        else:
            num = _sqrt(_sum((a - b).square().sum() for a, b in zip(paired, perturbed, strict=True)))
            den = _sqrt(_sum(a.square().sum() for a in clean))
        return num / den.clamp_min(_TINY)

    # "sample": per-sample sums over every layer's non-batch dims
    def per_sample(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(t.shape[0], -1)
        return flat.abs().sum(dim=1) if p == 1 else flat.square().sum(dim=1)

    num = _sum(per_sample(a - b) for a, b in zip(paired, perturbed, strict=True))
    den = _sum(per_sample(a) for a in paired)
    if p == 2:
        num, den = _sqrt(num), _sqrt(den)
    return (num / den.clamp_min(_TINY)).sum() / n  # the other rows' ratios are 0
