"""
The output-stability term of stability training (Zheng, Song, Leung & Goodfellow, CVPR 2016).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def stability_kl(logits: torch.Tensor, logits_perturbed: torch.Tensor) -> torch.Tensor:
    r"""
    Mean over the batch of :math:`\mathrm{KL}(p(x) \,\|\, p(x'))
    = \sum_j p_j(x)\,(\log p_j(x) - \log p_j(x'))`, with :math:`p` the softmax of the logits.

    Computed from ``log_softmax`` of both inputs (finite for any finite logits; a class with :math:`p_j(x) = 0`
    contributes 0), in float32 at least. The gradient flows into both arguments.

    :param logits: Logits of the clean inputs ``(n, nb_classes)``.
    :param logits_perturbed: Logits of the perturbed inputs, same shape.
    :return: A scalar tensor.
    """
    if logits.shape != logits_perturbed.shape or logits.ndim != 2:
        raise ValueError(
            f"Need two logits tensors of the same shape (n, nb_classes), got {tuple(logits.shape)} and "
            f"{tuple(logits_perturbed.shape)}."
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits, logits_perturbed = logits.float(), logits_perturbed.float()
    log_p = torch.log_softmax(logits, dim=1)
    log_q = torch.log_softmax(logits_perturbed, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
