"""
AT-LR: layer-wise regularized adversarial training over the LSA most-vulnerable layers (paper 004, Algorithm 3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from art.data_generators import DataGenerator

from art_latent.analysis.lsa import DEFAULT_ETA, LayerSustainabilityAnalysis, LSAResult
from art_latent.estimator import LatentClassifier
from art_latent.layers import LayerSpec
from art_latent.perturbations import PerturbationSource
from art_latent.regularizers.relative_error import layerwise_relative_error
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.validation import check_choice, check_int, check_range

logger = logging.getLogger(__name__)

BASES = ("ce", "trades")
#: How AT-LR reduces each layer's relative error over a batch (see :func:`layerwise_relative_error`).
LR_REDUCTIONS = ("sample", "batch")


def make_fast_attack(classifier: Any, eps: float, alpha: float = 1.25, batch_size: int = 128) -> Any:
    """
    The "FAST" attack of Wong et al. (2020) (AT-FAST in paper 004) as an ART attack: FGSM from a uniform random
    start in the eps-ball, one step of ``alpha * eps``, projected back to the ball (ART's
    ``ProjectedGradientDescent`` with ``max_iter=1, num_random_init=1``; it runs on the on-device torch path).

    :param classifier: The ART classifier.
    :param eps: The L-infinity budget (> 0).
    :param alpha: Step size as a multiple of `eps` (1.25 in Wong et al.).
    :param batch_size: ART's batch size when the attack is used through ART's ``generate``.
    :return: An ART ``ProjectedGradientDescent`` attack.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    eps = check_range("eps", eps, 0.0, float("inf"), low_open=True, high_open=True)
    alpha = check_range("alpha", alpha, 0.0, float("inf"), low_open=True, high_open=True)
    return ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=alpha * eps, max_iter=1,
                                    num_random_init=1, batch_size=batch_size, verbose=False)


class ATLRTrainer(LatentTrainer):
    r"""
    Layer-wise regularized adversarial training, AT-LR (Khalooei et al., paper 004, eqs. 13-15, Algorithm 3):

    .. math::

       \mathcal{L} = J(\theta, \hat x, y) + \sum_{l \in \mathcal{M}} \gamma_l\, CM(\phi_l(x), \phi_l(\hat x)),
       \qquad CM = \frac{\|\phi_l(x) - \phi_l(\hat x)\|_F}{\|\phi_l(x)\|_F}

    with :math:`\hat x` from the base attack (any ART attack: FGSM, PGD, ``AutoProjectedGradientDescent``, FAST =
    :func:`make_fast_attack`), :math:`J` the cross-entropy on :math:`\hat x` (``base="ce"``) or the TRADES loss
    :math:`CE(f(x), y) + \beta\,KL(f(x) \| f(\hat x))` (``base="trades"``), :math:`CM` averaged over the batch
    (``reduction="batch"``: one Frobenius ratio for the whole batch, as the authors' LSA code), and
    :math:`\mathcal{M}` the most-vulnerable-layer list of the Layer Sustainability Analysis
    (:class:`~art_latent.analysis.lsa.LayerSustainabilityAnalysis`) or layers given by name.

    :math:`x` and :math:`\hat x` go through **one** forward pass (concatenated batch) that returns the logits and the
    activations; BatchNorm layers thus normalise with the statistics of the clean and adversarial samples together.
    ``gamma=0`` gives the base adversarial training with the same forward (the fair baseline).

    With ``layers="lsa"`` the analysis runs at the start of ``fit`` on ``lsa_samples`` random training samples and the
    *current* model: pre-train the model first (paper 004, Algorithm 2, step 1), or run the analysis yourself and
    pass the layer names. The selection is in :attr:`layers` and :attr:`lsa_result`, and in checkpoints (a resumed
    run keeps it).

    | Paper link: https://arxiv.org/abs/2202.02626
    """

    # Always set after construction: __init__ calls set_attack() (the base class allows None for methods without one).
    attack: PerturbationSource
    #: The analysis settings only choose the layers, which a resumed run restores from its checkpoint.
    resume_ignores = LatentTrainer.resume_ignores | {"lsa_samples", "eta", "lsa_result"}

    def resume_settings(self) -> dict[str, Any]:
        """The base settings, with ``layers="lsa"`` while the layers are chosen by the analysis (not the result)."""
        settings = super().resume_settings()
        if self._use_lsa:
            settings["layers"] = "lsa"
        return settings

    def __init__(
        self,
        classifier: LatentClassifier,
        attack: Any,
        layers: str | LayerSpec = "lsa",
        gamma: float | Sequence[float] = 1.0,
        eta: float = DEFAULT_ETA,
        base: str = "ce",
        beta: float = 6.0,
        lsa_samples: int = 512,
        lsa_attack: Any = None,
        fast_attack: bool = True,
        validation_attack: Any = "attack",
        reduction: str = "sample",
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to train.
        :param attack: The base attack making :math:`\\hat x`: an ART evasion attack on `classifier` or a
                       :class:`~art_latent.perturbations.PerturbationSource`. ART's FGSM/BIM/PGD run on the
                       on-device torch path when `fast_attack`.
        :param layers: ``"lsa"`` (default: the LSA most-vulnerable layers of the model at the start of ``fit``) or
                       layer names / patterns / types / indices into ``latent_layers``.
        :param gamma: :math:`\\gamma_l \\ge 0`: one weight for every layer or, with explicit `layers`, one per layer
                      (unpublished in the paper; 1.0 by default). 0 gives the base adversarial training.
        :param eta: The LSA cut-off :math:`\\eta` of Algorithm 1 (unpublished; default 0.5). When no layer passes
                    it, the single most vulnerable layer is used.
        :param base: ``"ce"`` (cross-entropy on :math:`\\hat x`, AT-FGSM/PGD/APGD/FAST) or ``"trades"``.
        :param beta: TRADES weight :math:`\\beta > 0` (6.0 as in TRADES; ``base="trades"`` only).
        :param lsa_samples: Number M of random training samples for the analysis (``layers="lsa"``).
        :param lsa_attack: Perturbation for the analysis; default: `attack`.
        :param fast_attack: Use the on-device torch path for ART's FGSM/BIM/PGD.
        :param validation_attack: ``"attack"`` (default: `attack`), ``None``, or an ART attack / perturbation source
                                  for the robust validation accuracy.
        :param reduction: How :math:`CM` is reduced over a batch, in the loss and in the analysis of
                          ``layers="lsa"``: ``"sample"`` (default: the mean of the per-sample relative errors, the
                          expectation of eq. 14) or ``"batch"`` (one Frobenius ratio over the whole batch, what the
                          authors' LSA code computes).
        :param trainer_kwargs: ``seed``, ``log_every``, ``amp``: see :class:`~art_latent.trainers.LatentTrainer`.
        """
        super().__init__(classifier, validation_attack=validation_attack, **trainer_kwargs)
        self.set_attack(attack, fast=fast_attack)
        self.base = check_choice("base", base, BASES)
        self.reduction = check_choice("reduction", reduction, LR_REDUCTIONS)
        self.beta = check_range("beta", beta, 0.0, float("inf"), low_open=True, high_open=True)
        self.eta = check_range("eta", eta, -float("inf"), float("inf"), low_open=True, high_open=True)
        self.lsa_samples = check_int("lsa_samples", lsa_samples)
        self.lsa_attack: PerturbationSource = (
            self.attack if lsa_attack is None else self._attack_source(lsa_attack, fast_attack, "lsa_attack")
        )
        self._use_lsa = isinstance(layers, str) and layers == "lsa"
        if isinstance(gamma, Real) and not isinstance(gamma, bool):
            self.gamma: float | tuple[float, ...] = check_range("gamma", gamma, 0.0, float("inf"), high_open=True)
            weights: tuple[float, ...] = (self.gamma,)
        elif isinstance(gamma, Sequence) and not isinstance(gamma, str):
            if self._use_lsa:
                raise ValueError("Per-layer `gamma` needs an explicit `layers` list (layers='lsa' picks them in fit).")
            weights = tuple(check_range("gamma", g, 0.0, float("inf"), high_open=True) for g in gamma)
            self.gamma = weights
        else:
            raise ValueError(f"`gamma` must be a non-negative number or a list of them, got {gamma!r}.")
        #: False when every gamma is 0: base adversarial training, no analysis and no activations.
        self.regularized = any(w > 0 for w in weights)
        self.lsa_result: LSAResult | None = None
        self.layers: list[str] | None = None
        if not self._use_lsa:
            self.layers = self._classifier.require_latent_layers(layers)
            if isinstance(self.gamma, tuple) and len(self.gamma) != len(self.layers):
                raise ValueError(f"`gamma` has {len(self.gamma)} weights for {len(self.layers)} layers {self.layers}.")

    # ------------------------------------------------------------------ layer selection

    def select_layers(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> list[str]:
        """
        Run the Layer Sustainability Analysis on `x` with the analysis attack and select the most vulnerable layers
        (Algorithm 1 with :attr:`eta`; the top layer alone when none passes the cut-off). Sets :attr:`layers` and
        :attr:`lsa_result`.

        :param x: Samples (the analysis uses all of them).
        :param y: Their labels.
        :return: The selected layer names, most vulnerable first.
        """
        x_t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
        y_t = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))
        analysis = LayerSustainabilityAnalysis(self._classifier)
        result = analysis.run(x_t.detach().cpu(), attack={"attack": self.lsa_attack}, y=y_t.detach().cpu(),
                              reduction=self.reduction)
        selected = result.most_vulnerable(self.eta)
        if not selected:
            means = result.layer_mean()
            selected = [result.layers[int(np.argmax(means))]]
            logger.warning("No layer passes mu + %.3g sigma; AT-LR regularizes the most vulnerable one, %s.",
                           self.eta, selected[0])
        self.lsa_result = result
        self.layers = selected
        logger.info("AT-LR layers (LSA, eta=%.3g): %s; mean relative errors %s.", self.eta, selected,
                    dict(zip(result.layers, np.round(result.layer_mean(), 4).tolist(), strict=True)))
        return list(selected)

    def prepare_data(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        if self.regularized and self.layers is None:
            m = min(self.lsa_samples, len(x))
            # A generator of its own: the shuffling stays identical to a run without the analysis (gamma=0).
            generator = torch.Generator()
            if self.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.seed)
            index = torch.randperm(len(x), generator=generator)[:m].to(x.device)
            self.select_layers(x[index], y[index])
        return {"x": x, "y": y}

    def prepare_generator(self, generator: DataGenerator, resuming: bool) -> None:
        """
        With ``layers="lsa"`` and no selection yet, run the analysis on about ``lsa_samples`` samples drawn from
        `generator` before the first epoch (not when resuming: the checkpoint holds the selection).

        :param generator: The ART ``DataGenerator``.
        :param resuming: Whether ``fit_generator`` resumes from a checkpoint.
        """
        if not self.regularized or self.layers is not None or resuming:
            return
        xs, ys, count = [], [], 0
        while count < self.lsa_samples:
            x_b, y_b = self._check(*generator.get_batch())
            xs.append(x_b)
            ys.append(y_b)
            count += len(x_b)
        self.select_layers(np.concatenate(xs)[: self.lsa_samples], np.concatenate(ys)[: self.lsa_samples])

    # ------------------------------------------------------------------ step

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch["x"], batch["y"]
        if self.regularized and self.layers is None:
            raise RuntimeError("AT-LR has no layers: call select_layers(x, y) or fit(), or pass `layers`.")
        n = len(x)
        x_hat = self.attack.generate(x, y).to(x.dtype)
        both = torch.cat([x, x_hat])
        if self.regularized:
            logits_all, acts = self._classifier.forward_with_latents(both, self.layers)
        else:
            logits_all, acts = self._classifier.model_logits(self._preprocess(both)), {}
        logits, logits_adv = logits_all[:n], logits_all[n:]
        if self.base == "ce":
            base_loss = self._classifier._loss(logits_adv, y)
            logs = {}
        else:
            ce = self._classifier._loss(logits, y)
            kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.log_softmax(logits.float(), dim=1),
                          reduction="batchmean", log_target=True)
            base_loss = ce + self.beta * kl
            logs = {"ce": ce.detach(), "kl": kl.detach()}
        loss = base_loss
        if acts:
            weights = self.gamma if isinstance(self.gamma, tuple) else [self.gamma] * len(acts)
            regularizer = layerwise_relative_error([a[:n] for a in acts.values()], [a[n:] for a in acts.values()],
                                                   list(weights), reduction=self.reduction)
            loss = base_loss + regularizer
            logs["regularizer"] = regularizer.detach()
        else:  # plain AT (gamma = 0) logs the same keys as AT-LR, so both fill one table
            logs["regularizer"] = torch.zeros((), device=base_loss.device)
        logs["base_loss"] = base_loss.detach()
        with torch.no_grad():
            logs["adv_accuracy"] = (logits_adv.argmax(1) == y).float().mean()
        return loss, logits, logs

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        # A resumed run must regularize the layers chosen on the starting model, not re-analyse the trained one.
        return {"layers": list(self.layers)} if self.layers is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "layers" in state:
            self.layers = list(state["layers"])
