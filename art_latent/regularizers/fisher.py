"""
FIMR's Fisher-information trace (paper 000, eq. 2, after Shen et al. 2019).
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

FISHER_REDUCTIONS = ("mean", "sum")


def inverse_probabilities(logits: torch.Tensor, max_inverse: float = 1e12) -> torch.Tensor:
    r"""
    :math:`1/p_j` of the softmax of `logits`, computed as :math:`\exp(-\log\mathrm{softmax})` and kept finite.

    With :math:`t_j = -\log p_j \ge 0` and :math:`c = \log(\text{max\_inverse})`, the value is :math:`e^{t_j}` for
    :math:`t_j \le c` and the tangent line :math:`e^{c}\,(1 + t_j - c)` beyond: continuous with a continuous first
    derivative, so both the value and the gradient stay finite for any finite logits (e.g. :math:`\pm 10^4`), and
    the gradient still pushes a vanishing probability up (a hard clamp would leave it with a zero gradient).
    Computed in float32 at least, also under ``torch.autocast``.

    :param logits: Logits ``(n, nb_classes)``.
    :param max_inverse: Where the exponential turns linear, :math:`1/p_{\min}` (> 1).
    :return: ``(n, nb_classes)`` tensor of (continued) inverse probabilities.
    """
    if not max_inverse > 1 or not math.isfinite(max_inverse):
        raise ValueError(f"`max_inverse` must be a finite number > 1, got {max_inverse!r}.")
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (n, nb_classes), got {tuple(logits.shape)}.")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    neg_log_p = -torch.log_softmax(logits, dim=1)
    c = math.log(max_inverse)
    return torch.exp(neg_log_p.clamp(max=c)) * (1.0 + (neg_log_p - c).clamp(min=0.0))


def fisher_trace(logits: torch.Tensor, reduction: str = "mean", max_inverse: float = 1e12) -> torch.Tensor:
    r"""
    The FIMR regularizer: the approximate trace of the Fisher information of the softmax output,
    :math:`\sum_j 1/p_j` per sample (paper 000, eq. 2, after Shen et al. 2019), averaged over the batch.

    :param logits: Logits ``(n, nb_classes)``.
    :param reduction: ``"mean"`` over the batch (the paper, default) or ``"sum"`` (the authors' Keras code, whose
                      coefficient 0.00025 with a batch sum equals ``0.00025 * n`` with the mean).
    :param max_inverse: See :func:`inverse_probabilities`.
    :return: A scalar tensor (float32 at least).
    """
    if reduction not in FISHER_REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {FISHER_REDUCTIONS}, got {reduction!r}.")
    per_sample = inverse_probabilities(logits, max_inverse).sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()
