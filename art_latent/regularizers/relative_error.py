"""
The relative error of a layer's representation (paper 004, eq. 11): LSA's comparison measure and AT-LR's regularizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Real

import torch

logger = logging.getLogger(__name__)

REDUCTIONS = ("none", "mean", "batch")
#: Reductions of :func:`layerwise_relative_error` (and AT-LR): per-sample mean or one ratio per batch.
LAYERWISE_REDUCTIONS = ("sample", "mean", "batch")
_TINY = 1e-12


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _norm(squares: torch.Tensor) -> torch.Tensor:
    """Square root of summed squares: exactly 0 at 0, with a finite gradient there (sqrt's is infinite)."""
    return torch.where(squares > 0, squares.clamp_min(_TINY**2).sqrt(), torch.zeros_like(squares))


def relative_error(clean: torch.Tensor, perturbed: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""
    The comparison measure of paper 004 (eq. 11), the relative error of one layer's representation:

    .. math::

       CM(\phi_l(x), \phi_l(\hat x)) = \frac{\|\phi_l(x) - \phi_l(\hat x)\|_F}{\|\phi_l(x)\|_F}

    computed **per sample** (the Frobenius norm runs over all non-batch dimensions of one sample's activation).
    The gradient flows through the numerator and the denominator. Identical rows give exactly 0 with a finite
    gradient (the square root's is infinite at 0), the denominator is clamped at 1e-12 (an all-zero clean row gives
    ``|diff| / 1e-12``), and float16/bfloat16 inputs are accumulated in float32.

    :param clean: Activations of the clean inputs, shape ``(n, ...)``.
    :param perturbed: Activations of the perturbed inputs, same shape.
    :param reduction: ``"none"`` (one value per sample, shape ``(n,)``), ``"mean"`` (default: the mean over the
                      samples, the expectation in the paper's eq. 12/14) or ``"batch"`` (one ratio of the norms over
                      the whole batch, what the authors' LSA code computes).
    :return: The relative error(s).
    :raises ValueError: On an unknown `reduction` or tensors of different shapes.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
    if clean.shape != perturbed.shape:
        raise ValueError(f"Clean and perturbed activations differ in shape: {tuple(clean.shape)} vs "
                         f"{tuple(perturbed.shape)}.")
    if clean.ndim == 0:
        raise ValueError("Activations need a batch dimension, got a 0-d tensor.")
    a, b = _as_float(clean), _as_float(perturbed)
    if reduction == "batch":
        return _norm((a - b).square().sum()) / _norm(a.square().sum()).clamp_min(_TINY)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    ratios = _norm((a - b).square().sum(dim=1)) / _norm(a.square().sum(dim=1)).clamp_min(_TINY)
    return ratios if reduction == "none" else ratios.mean()


def layerwise_relative_error(
    clean: Sequence[torch.Tensor],
    perturbed: Sequence[torch.Tensor],
    gamma: float | Sequence[float] = 1.0,
    reduction: str = "sample",
) -> torch.Tensor:
    r"""
    AT-LR's layer-wise regularizer (paper 004, eq. 15), by default averaged over the batch:

    .. math::

       LR(\theta, x, \hat x) = \sum_{l \in \mathcal{M}} \gamma_l\,
         \frac{1}{n}\sum_i CM(\phi_l(x_i), \phi_l(\hat x_i)).

    With ``reduction="batch"`` each layer's term is instead one ratio over the whole batch,
    :math:`\|\phi_l(X) - \phi_l(\hat X)\|_F / \|\phi_l(X)\|_F` (the norms run over the batch too), which is what
    the authors' LSA code computes (``np.linalg.norm`` of the batch's activation tensors). The two differ when the
    samples' activation norms differ: the batch ratio weights each sample by its clean norm.

    :param clean: Activations of the clean inputs, one tensor per layer, each ``(n, ...)``.
    :param perturbed: Activations of the perturbed inputs, same shapes.
    :param gamma: One weight for every layer, or one weight per layer (non-negative).
    :param reduction: ``"sample"`` (default: the mean of the per-sample relative errors; ``"mean"`` is accepted as
                      an alias) or ``"batch"`` (one Frobenius ratio for the whole batch, the authors' code).
    :return: A scalar tensor.
    :raises ValueError: On mismatched lists, shapes or weights, or an unknown `reduction`.
    """
    if reduction not in LAYERWISE_REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {LAYERWISE_REDUCTIONS}, got {reduction!r}.")
    if len(clean) != len(perturbed) or not clean:
        raise ValueError(f"Need the same non-zero number of clean and perturbed layers, got {len(clean)} and "
                         f"{len(perturbed)}.")
    # float is listed for the type checker, which does not count it as a numbers.Real.
    weights = [float(gamma)] * len(clean) if isinstance(gamma, (float, Real)) else [float(g) for g in gamma]
    if len(weights) != len(clean):
        raise ValueError(f"`gamma` has {len(weights)} weights for {len(clean)} layers.")
    if any(not w >= 0 for w in weights):
        raise ValueError(f"`gamma` weights must be non-negative, got {weights}.")
    per_layer = "batch" if reduction == "batch" else "mean"
    terms = [w * relative_error(a, b, reduction=per_layer)
             for w, a, b in zip(weights, clean, perturbed, strict=True)]
    return torch.stack(terms).sum()
