"""
:class:`FIMRTrainer`: Fisher-information-matrix regularization (Shen et al. 2019), a baseline of paper 000.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from art_latent.estimator import LatentClassifier
from art_latent.regularizers.fisher import FISHER_REDUCTIONS, fisher_trace
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.validation import check_choice, check_range

logger = logging.getLogger(__name__)


class FIMRTrainer(LatentTrainer):
    r"""
    Fine-tune a classifier with the FIMR loss of paper 000 (eq. 2):

    .. math::
        L = (1 - \zeta)\,\mathrm{CE}(f(x), y) + \zeta\,\frac{1}{n}\sum_{i=1}^{n} \sum_j \frac{1}{p_j(x_i)}

    where :math:`p_j` is the softmax output and :math:`\sum_j 1/p_j` approximates the trace of the Fisher information
    matrix of the output (Shen et al. 2019). Benign inputs only: no adversarial examples are needed.

    :math:`1/p_j` is computed as :math:`\exp(-\log\mathrm{softmax})` and continued linearly beyond `max_inverse`
    (see :func:`~art_latent.regularizers.fisher.inverse_probabilities`), so the loss and its gradient stay finite for
    any finite logits. The regularizer is huge for a confident model (:math:`1/p_j` of a wrong class easily exceeds
    :math:`10^8`): use a scale-invariant optimizer such as Nadam (the paper's) or Adam, not plain SGD.

    The authors' Keras code used :math:`\zeta = 0.00025` on the batch *sum* of the regularizer, i.e.
    :math:`0.00025\,n` on the mean (0.016 at their batch size 64); the paper states :math:`\zeta = 0.0025` (mean).
    ``reduction="sum"`` reproduces the code.

    | Paper link: https://arxiv.org/abs/2110.05419 (paper 000); Shen et al.: https://arxiv.org/abs/1909.06137
    """

    def __init__(
        self,
        classifier: LatentClassifier,
        zeta: float = 0.0025,
        reduction: str = "mean",
        max_inverse: float = 1e12,
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to fine-tune (its optimizer is used; the paper uses ``torch.optim.NAdam``).
        :param zeta: Regularization weight :math:`\\zeta \\in [0, 1]` (0.0025 in the paper).
        :param reduction: ``"mean"`` of the per-sample regularizer over the batch (the paper) or ``"sum"`` (the
                          authors' code, with ``zeta=0.00025``).
        :param max_inverse: :math:`1/p_j` beyond which the exponential is continued linearly (> 1, finite).
        :param trainer_kwargs: ``validation_attack``, ``seed``, ``log_every``, ``amp``: see
                               :class:`~art_latent.trainers.base.LatentTrainer`.
        """
        zeta = check_range("zeta", zeta, 0.0, 1.0)
        reduction = check_choice("reduction", reduction, FISHER_REDUCTIONS)
        max_inverse = check_range("max_inverse", max_inverse, 1.0, math.inf, low_open=True, high_open=True)
        super().__init__(classifier, **trainer_kwargs)
        self.zeta = zeta
        self.reduction = reduction
        self.max_inverse = max_inverse

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits = self._classifier.model_logits(self._preprocess(batch["x"]))
        ce = self._classifier._loss(logits, batch["y"])
        fisher = fisher_trace(logits, self.reduction, self.max_inverse)
        loss = (1.0 - self.zeta) * ce + self.zeta * fisher
        return loss, logits, {"ce": ce.detach(), "regularizer": fisher.detach()}
