"""
:class:`DeepDefenseTrainer`: training with a differentiable DeepFool-norm regularizer (Yan, Guo & Zhang, NeurIPS 2018).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from art_latent.estimator import LatentClassifier
from art_latent.regularizers.deepfool import deep_defense_regularizer, deepfool, perturbation_ratio
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.validation import check_int, check_range

logger = logging.getLogger(__name__)

#: Batch size of the one-time BatchNorm statistics pass.
_BN_BATCH = 256


class DeepDefenseTrainer(LatentTrainer):
    r"""
    Fine-tune a classifier with Deep Defense's regularizer:

    .. math::
        L = \mathrm{CE}(f(x), y) + \lambda\,\frac{1}{n}\sum_i R_i, \qquad
        R_i = \begin{cases} \exp(-c\,\|r_i\|_2/\|x_i\|_2) & f(x_i) = y_i \\
                            \exp(d\,\|r_i\|_2/\|x_i\|_2) & \text{otherwise} \end{cases}

    with :math:`r_i` the multi-class L2 DeepFool perturbation of :math:`x_i` (overshoot 0.02, `max_iter` steps;
    misclassified samples are pushed towards their true label; each sample stops once its goal is reached). The
    perturbation is computed **inside the autograd graph** (:func:`~art_latent.regularizers.deepfool.deepfool` with
    ``create_graph=True``), so the regularizer's gradient reaches the weights through :math:`r_i`, which is what the
    authors' "inverse network" computes for ReLU networks; :math:`\|x_i\|` is a constant. The first DeepFool forward
    is the cross-entropy's forward (one forward, shared).

    Every BatchNorm layer runs in eval mode (running statistics, not updated; affine parameters still trained)
    during ``fit`` and is restored afterwards: DeepFool needs every sample's gradients to be its own, which batch
    statistics would couple. Other modules (e.g. dropout) keep the train mode.

    | Paper link: https://arxiv.org/abs/1803.00404 (code: https://github.com/ZiangYan/deepdefense.pytorch)
    """

    def __init__(
        self,
        classifier: LatentClassifier,
        lam: float = 15.0,
        c: float = 25.0,
        d: float = 5.0,
        max_iter: int = 5,
        overshoot: float = 0.02,
        candidates: int | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to fine-tune (its optimizer is stepped; the authors use SGD, momentum 0.9,
                           lr 5e-4, weight decay 5e-4, halving the learning rate after 80% of the epochs).
        :param lam: Regularization weight :math:`\\lambda \\ge 0` (15 in the paper for MNIST and CIFAR-10).
        :param c: Scale for correctly classified samples, :math:`c > 0` (25; 70 for NIN, 500 on ImageNet).
        :param d: Scale for misclassified samples, :math:`d > 0` (5).
        :param max_iter: DeepFool steps during training, >= 1 (5 in the authors' code).
        :param overshoot: DeepFool's overshoot, >= 0 (0.02).
        :param candidates: Classes DeepFool considers per step for correctly classified samples (the highest
                           clean logits); ``None`` (default, the authors): all ``nb_classes - 1``. Fewer candidates
                           cost fewer backward passes.
        :param trainer_kwargs: ``validation_attack``, ``seed``, ``log_every``, ``amp``: see
                               :class:`~art_latent.trainers.LatentTrainer`.
        """
        super().__init__(classifier, **trainer_kwargs)
        inf = float("inf")
        self.lam = check_range("lam", lam, 0.0, inf, high_open=True)
        self.c = check_range("c", c, 0.0, inf, low_open=True, high_open=True)
        self.d = check_range("d", d, 0.0, inf, low_open=True, high_open=True)
        self.max_iter = check_int("max_iter", max_iter)
        self.overshoot = check_range("overshoot", overshoot, 0.0, inf, high_open=True)
        nb_classes = self._classifier.nb_classes
        if nb_classes < 2:
            raise ValueError(f"Deep Defense needs at least two classes, the classifier has {nb_classes}.")
        if candidates is not None:
            candidates = check_int("candidates", candidates)
            if candidates > nb_classes - 1:
                raise ValueError(f"`candidates` must be in [1, {nb_classes - 1}] or None, got {candidates}.")
        self.candidates = candidates
        self._batchnorms = [
            m for m in self._classifier.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]

    def _never_estimated(self) -> list[torch.nn.modules.batchnorm._BatchNorm]:
        """BatchNorm layers whose running statistics are still their initial values (they never saw data)."""
        return [m for m in self._batchnorms
                if m.track_running_stats and m.running_mean is not None and m.running_var is not None
                and m.num_batches_tracked is not None and int(m.num_batches_tracked) == 0
                and bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())]

    def prepare_data(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """
        Estimate, once, the statistics of BatchNorm layers that never saw data: frozen at mean 0 / variance 1 they
        would not normalize, and on a fresh model the DeepFool ratios of misclassified samples then explode the
        exponential term (the loss reaches 1e21 within a few batches). A trained model is left as it is.
        """
        fresh = self._never_estimated()
        if fresh:
            logger.warning("%d BatchNorm layer(s) never saw data: estimating their running statistics once on the "
                           "training inputs (no weight update). Deep Defense is meant to fine-tune a trained model.",
                           len(fresh))
            momenta = [m.momentum for m in fresh]
            for m in fresh:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the whole pass
                m.train()
            try:
                with torch.no_grad():
                    for start in range(0, len(x), _BN_BATCH):
                        self._forward(x[start : start + _BN_BATCH].to(self.device))
            finally:
                for m, momentum in zip(fresh, momenta, strict=True):
                    m.momentum = momentum
                    m.eval()
        return super().prepare_data(x, y)

    def prepare_generator(self, generator: Any, resuming: bool) -> None:
        if not resuming and self._never_estimated():
            logger.warning("BatchNorm layers of the model never saw data and stay frozen at mean 0 / variance 1 under "
                           "fit_generator, which Deep Defense's exponential term does not survive: fine-tune a trained "
                           "model, or use fit(x, y), which estimates them once.")

    def train_mode(self) -> None:
        """Training mode with every BatchNorm layer frozen in eval mode (running statistics, no updates)."""
        self._classifier.model.train()
        for module in self._batchnorms:
            module.eval()

    def fit_context(self) -> contextlib.AbstractContextManager:
        # The regularizer differentiates through input gradients (double backward); the fused attention kernels
        # (flash / memory-efficient scaled_dot_product_attention, used by HF transformers) have no double backward,
        # the math kernel has.
        return sdpa_kernel([SDPBackend.MATH])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._classifier.model_logits(self._preprocess(x))

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch["x"], batch["y"]
        x0 = x.detach().requires_grad_(True)
        logits = self._forward(x0)
        ce = self._classifier._loss(logits, y)
        result = deepfool(
            self._forward,
            x0,
            labels=y,
            max_iter=self.max_iter,
            overshoot=self.overshoot,
            candidates=self.candidates,
            create_graph=True,
            logits=logits,
            # On the CPU a host read costs no synchronisation: DeepFool stops early and steps only the samples it
            # has not fooled yet (samples are independent: BatchNorm is frozen during fit).
            stop_early=self.device.type == "cpu",
            compact=self.device.type == "cpu",
        )
        ratio = perturbation_ratio(result.perturbation, x)
        correct = logits.detach().argmax(1) == y
        regularizer = deep_defense_regularizer(ratio, correct, self.c, self.d)
        loss = ce + self.lam * regularizer
        logs = {
            "ce": ce.detach(),
            "regularizer": regularizer.detach(),
            "ratio": ratio.detach().mean(),
            "fooled": result.fooled.float().mean(),
        }
        return loss, logits, logs
