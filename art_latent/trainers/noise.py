"""
Gaussian-noise baselines of paper 000: :class:`GaussianNoiseTrainer` (AGNT) and :class:`StabilityTrainer` (Zheng et
al. 2016).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from art_latent.estimator import LatentClassifier
from art_latent.perturbations import GaussianNoiseSource
from art_latent.regularizers.stability import stability_kl
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.trainers.sample_state import SampleState
from art_latent.validation import check_budget_units, check_range

logger = logging.getLogger(__name__)


def _noise_source(classifier: LatentClassifier, sigma: float) -> GaussianNoiseSource:
    return GaussianNoiseSource(sigma=sigma, clip_values=classifier.clip_values)


class GaussianNoiseTrainer(LatentTrainer):
    r"""
    AGNT: fine-tune on inputs corrupted by additive white Gaussian noise,

    .. math::
        L = \mathrm{CE}(f(\mathrm{clip}(x + n)), y), \qquad n \sim \mathcal{N}(0, \sigma^2 I),

    clipped to the classifier's ``clip_values`` (no clipping without them). With ``keep_clean=True`` the batch holds
    both ``x`` and its noisy copy (one forward of the concatenation, CE averaged over the ``2n`` rows).

    The noise is drawn afresh for every batch (torch's generator, seeded by ``seed``); ``fixed_noise=True`` draws one
    noisy copy per sample at the start of ``fit`` and reuses it every epoch, as the authors' code did (one AGN copy
    of each fine-tuning sample). ``fit_generator`` always draws per batch.

    The ``accuracy`` in ``history`` is measured on the noisy inputs (on the clean ones with ``keep_clean``).

    | Paper link: https://arxiv.org/abs/2110.05419 (paper 000, "AGNT"; after Gilmer et al. 2019 and Zantedeschi
      et al. 2017)
    """

    def __init__(
        self,
        classifier: LatentClassifier,
        sigma: float = 32 / 255,
        keep_clean: bool = False,
        fixed_noise: bool = False,
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to fine-tune (its optimizer is used).
        :param sigma: Standard deviation of the noise, > 0, in input units (32/255 in paper 000, for inputs in
                      [0, 1]).
        :param keep_clean: Train on the clean inputs too (each batch: clean and noisy copies).
        :param fixed_noise: Draw the noise once per sample at the start of ``fit`` (the authors' code) instead of
                            per batch.
        :param trainer_kwargs: ``validation_attack``, ``seed``, ``log_every``, ``amp``: see
                               :class:`~art_latent.trainers.base.LatentTrainer`.
        """
        sigma = check_range("sigma", sigma, 0.0, math.inf, low_open=True, high_open=True)
        check_budget_units("sigma", sigma, getattr(classifier, "clip_values", None), "standard deviation")
        if not isinstance(keep_clean, bool):
            raise ValueError(f"`keep_clean` must be a bool, got {keep_clean!r}.")
        if not isinstance(fixed_noise, bool):
            raise ValueError(f"`fixed_noise` must be a bool, got {fixed_noise!r}.")
        super().__init__(classifier, **trainer_kwargs)
        self.sigma = sigma
        self.keep_clean = keep_clean
        self.fixed_noise = fixed_noise
        self.noise = _noise_source(self._classifier, sigma)

    def sample_state(self) -> SampleState | None:
        """With `fixed_noise`, one noisy copy per sample, drawn at the start of ``fit`` (a resume reuses it)."""
        if not self.fixed_noise:
            return None
        return SampleState(self.make_noisy, "never", 1, "fixed noisy copies")

    def make_noisy(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """
        The noisy copies of `x`.

        :param x: Clean inputs on the device.
        :param y: Class indices.
        :return: ``{"x_noisy"}``.
        """
        return {"x_noisy": self.noise.generate(x, y)}

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch["x"], batch["y"]
        x_noisy = batch["x_noisy"] if "x_noisy" in batch else self.noise.generate(x, y)
        model = self._classifier.model_logits
        if not self.keep_clean:
            logits = model(self._preprocess(x_noisy))
            return self._classifier._loss(logits, y), logits, {}
        logits_all = model(self._preprocess(torch.cat([x, x_noisy])))
        loss = self._classifier._loss(logits_all, torch.cat([y, y]))
        return loss, logits_all[: len(x)], {}


class StabilityTrainer(LatentTrainer):
    r"""
    Stability training (Zheng, Song, Leung & Goodfellow, CVPR 2016) for classification:

    .. math::
        L = \mathrm{CE}(f(x), y) + \alpha\,\mathrm{KL}\big(p(x) \,\|\, p(x')\big), \qquad
        x' = \mathrm{clip}(x + n),\ n \sim \mathcal{N}(0, \sigma^2 I),

    with :math:`p` the softmax output (:func:`~art_latent.regularizers.stability.stability_kl`), fresh noise per
    batch, clipped to the classifier's ``clip_values``. ``x`` and ``x'`` go through the network in **one** forward
    pass of their concatenation (shared BatchNorm statistics); the CE is on the clean half, the gradient flows
    through both distributions.

    Zheng et al. write the stability term as :math:`-\sum_j p_j(x) \log p_j(x')`, which is the KL plus the entropy
    of :math:`p(x)`; the KL (the form of the task) vanishes for identical outputs.

    | Paper link: https://arxiv.org/abs/1604.04326
    """

    def __init__(
        self,
        classifier: LatentClassifier,
        alpha: float = 0.01,
        sigma: float = 0.04,
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to fine-tune (its optimizer is used).
        :param alpha: Weight :math:`\\alpha \\ge 0` of the stability term (0.01: Zheng et al.'s classification
                      setting).
        :param sigma: Standard deviation of the noise, > 0, in input units (0.04 for inputs in [0, 1], as Zheng et
                      al.).
        :param trainer_kwargs: ``validation_attack``, ``seed``, ``log_every``, ``amp``: see
                               :class:`~art_latent.trainers.base.LatentTrainer`.
        """
        alpha = check_range("alpha", alpha, 0.0, math.inf, high_open=True)
        sigma = check_range("sigma", sigma, 0.0, math.inf, low_open=True, high_open=True)
        check_budget_units("sigma", sigma, getattr(classifier, "clip_values", None), "standard deviation")
        super().__init__(classifier, **trainer_kwargs)
        self.alpha = alpha
        self.sigma = sigma
        self.noise = _noise_source(self._classifier, sigma)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch["x"], batch["y"]
        n = len(x)
        logits_all = self._classifier.model_logits(self._preprocess(torch.cat([x, self.noise.generate(x, y)])))
        logits = logits_all[:n]
        ce = self._classifier._loss(logits, y)
        kl = stability_kl(logits, logits_all[n:])
        return ce + self.alpha * kl, logits, {"ce": ce.detach(), "regularizer": kl.detach()}
