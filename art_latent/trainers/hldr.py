"""
:class:`HLDRTrainer`: hidden-layer latent disparity regularization (Schwartz & Ditzler, IJCNN 2021).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from art_latent.estimator import LatentClassifier
from art_latent.layers import LayerSpec
from art_latent.perturbations import (
    GaussianNoiseSource,
    PerturbationSource,
    budget_pairs,
)
from art_latent.regularizers import NORMALIZATIONS, latent_disparity
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.trainers.sample_state import SampleState
from art_latent.validation import check_budget_units, check_choice, check_int, check_range

logger = logging.getLogger(__name__)

REGENERATE = ("never", "epoch", "batch")
#: The host copy of each pair's budget (see ``skip_benign_pairs``).
HOST_EPS = "eps_host"


class HLDRTrainer(LatentTrainer):
    r"""
    Fine-tune a classifier with the hidden-layer latent disparity regularizer (HLDR):

    .. math::
        L = (1 - \xi)\,\mathrm{CE}(f(x), y) + \xi\,
            \frac{\sum_l |s_l(x) - s_l(x_a)|}{\sum_l |s_l(x)|}

    over pairs :math:`(x, x_a)` with :math:`x_a = x + \eta_\epsilon` for every budget :math:`\epsilon` in `budgets`
    (the paper's fine-tuning set :math:`\mathbb{D}`), plus Gaussian-noise pairs :math:`(x, \mathrm{clip}(x + n))`
    with `noise_sigma` (the set :math:`\mathbb{D}_\mathcal{N}`). :math:`s_l` are the activations of the classifier's
    latent layers (by default the post-activation output of every hidden conv/dense block).

    Both members of a pair go through the network in **one** forward pass (concatenated batch), so they share
    the BatchNorm layers *and* their batch statistics, as at test time when both meet the same running statistics.
    (The authors' Keras code gave the adversarial branch a second, never-trained BatchNorm; that is not copied.)
    The cross-entropy is computed on the benign inputs only, as in the authors' code.

    With ``regenerate="never"`` (the paper) the adversarial examples are generated once, on the starting model, at
    the start of ``fit``; ``"epoch"`` regenerates them on the current model before every epoch, ``"batch"`` for
    every batch (then ``batch_size`` counts benign samples, each expanded to its ``len(budgets)`` (+1) pairs). The
    pairs are the trainer's per-sample state (:meth:`sample_state`): from a loader each batch of samples trains on
    all their pairs, found by sample index (see :mod:`art_latent.trainers.sample_state`).

    | Paper link: https://doi.org/10.1109/IJCNN52387.2021.9533551 (arXiv: https://arxiv.org/abs/2110.05419)
    | Authors' code: https://github.com/dmschwar/robust-ldr
    """

    # Always set after construction: __init__ calls set_attack() (the base class allows None for methods without one).
    attack: PerturbationSource

    def __init__(
        self,
        classifier: LatentClassifier,
        attack: Any,
        xi: float = 0.25,
        budgets: Sequence[float] | None = (0.0, 16 / 255, 32 / 255),
        layers: LayerSpec | None = None,
        regenerate: str = "never",
        noise_sigma: float | None = None,
        normalization: str = "batch",
        p: int = 1,
        fast_attack: bool = True,
        generation_batch_size: int = 512,
        validation_attack: Any = "attack",
        skip_benign_pairs: bool = True,
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to fine-tune (its optimizer is used; the paper uses ``torch.optim.NAdam``).
        :param attack: The attack making :math:`x_a`: any ART evasion attack on `classifier` (FGSM in the paper)
                       or a :class:`~art_latent.perturbations.PerturbationSource`. ART's FGSM/BIM/PGD run on the
                       on-device torch path when `fast_attack` (same output as ART's ``generate``).
        :param xi: Regularization weight :math:`\\xi \\in [0, 1]` (0.25 in the paper).
        :param budgets: Attack budgets :math:`\\epsilon \\ge 0`; each sample gets one pair per budget; 0 gives the
                        benign pair :math:`(x, x)`. ``None``: the attack's own ``eps`` only. For an iterative attack
                        the step size is scaled with the budget (same ``eps_step/eps`` ratio).
        :param layers: Latent layers to regularize (names, patterns, types); default: the classifier's
                       ``latent_layers``.
        :param regenerate: ``"never"`` (precompute on the starting model, the paper), ``"epoch"`` or ``"batch"``.
        :param noise_sigma: Standard deviation of the extra Gaussian-noise pairs (the paper's :math:`\\mathbb{D}_
                            \\mathcal{N}` uses 32/255); ``None`` adds none.
        :param normalization: ``"batch"`` (the paper: one ratio over batch and layers), ``"layer"`` or ``"sample"``;
                              see :func:`art_latent.regularizers.latent_disparity`.
        :param p: 1 (L1, the paper) or 2 (L2).
        :param fast_attack: Use the on-device torch path for ART's FGSM/BIM/PGD.
        :param generation_batch_size: Batch size when precomputing the pairs.
        :param validation_attack: Attack for the robust validation accuracy: ``"attack"`` (default) uses `attack`
                                  at its own budget, ``None`` disables it, or an ART attack / perturbation source.
        :param skip_benign_pairs: The pairs of budget 0 are ``(x, x)``: their perturbed activations are the clean ones,
                                  so only the other pairs take the second forward pass (with budgets 0, 16/255 and
                                  32/255 a third fewer rows). Exact without BatchNorm and dropout; with BatchNorm in
                                  train mode the batch statistics are computed without the duplicate clean rows, and
                                  dropout no longer adds noise to the budget-0 disparity (which is 0 by definition).
                                  ``False``: every pair through the network, as in the authors' code.
        :param trainer_kwargs: ``seed``, ``log_every``, ``amp``: see :class:`~art_latent.trainers.LatentTrainer`.
        """
        super().__init__(classifier, validation_attack=validation_attack, **trainer_kwargs)
        if not isinstance(skip_benign_pairs, bool):
            raise ValueError(f"`skip_benign_pairs` must be True or False, got {skip_benign_pairs!r}.")
        self.skip_benign_pairs = skip_benign_pairs
        source = self.set_attack(attack, fast=fast_attack)
        self.xi = check_range("xi", xi, 0.0, 1.0)
        if budgets is None:
            if source.eps is None:
                raise ValueError("`budgets=None` uses the attack's own eps, but this attack has none; give budgets.")
            budgets = (source.eps,)
        budgets = tuple(budgets)
        if not budgets:
            raise ValueError("`budgets` is empty: give at least one budget (0 gives benign pairs).")
        self.budgets = tuple(check_range("budgets", b, 0.0, float("inf"), high_open=True) for b in budgets)
        check_budget_units("budgets", list(self.budgets), self._classifier.clip_values)
        if any(b > 0 for b in self.budgets) and source.eps is None:
            raise ValueError(
                f"The attack {type(attack).__name__} has no `eps` to set per budget; use budgets=None or an attack "
                "with an eps (FGSM, PGD, BIM, ...)."
            )
        self.layers = self._classifier.require_latent_layers(layers)
        self.regenerate = check_choice("regenerate", regenerate, REGENERATE)
        self.noise: GaussianNoiseSource | None = None
        if noise_sigma is not None:
            sigma = check_range("noise_sigma", noise_sigma, 0.0, float("inf"), low_open=True, high_open=True)
            check_budget_units("noise_sigma", sigma, self._classifier.clip_values, "standard deviation")
            self.noise = GaussianNoiseSource(sigma=sigma, clip_values=self._classifier.clip_values)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.p = check_choice("p", p, (1, 2))
        self.generation_batch_size = check_int("generation_batch_size", generation_batch_size)

    # ------------------------------------------------------------------ pairs

    def sample_state(self) -> SampleState:
        """The pairs, made by :meth:`make_pairs` and remade as `regenerate` says."""
        return SampleState(self.make_pairs, self.regenerate, len(self.budgets) + (self.noise is not None),
                           "HLDR pairs", repeats=("x", "y"))

    def make_pairs(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """
        Build the fine-tuning pairs of `x`: one per budget (and one noise pair with ``noise_sigma``).

        :param x: Benign inputs on the device.
        :param y: Class indices.
        :return: ``{"x", "x_pair", "y", "eps", "eps_host"}``, ``len(budgets)`` (+1) times as long as `x`, grouped by
                 budget; ``eps`` is the pair's budget (``-1`` for a noise pair), ``eps_host`` the same on the host.
        """
        pairs = budget_pairs(self.attack, x, y, self.budgets, self.noise, self.generation_batch_size)
        budgets = self.budgets + ((-1.0,) if self.noise is not None else ())
        pairs[HOST_EPS] = torch.tensor(budgets, dtype=torch.float64).repeat_interleave(len(x))
        return pairs

    # ------------------------------------------------------------------ step

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, x_pair, y, eps_host = batch["x"], batch["x_pair"], batch["y"], batch.get(HOST_EPS)
        n = len(x)
        attacked = None
        if self.skip_benign_pairs and eps_host is not None:
            keep = eps_host != 0
            if not bool(keep.all()):  # a host tensor: no device synchronisation
                attacked = keep.nonzero().squeeze(1).to(self.device, non_blocking=True)
        inputs = torch.cat([x, x_pair if attacked is None else x_pair.index_select(0, attacked)])
        logits_all, acts = self._classifier.forward_with_latents(inputs, self.layers)
        logits = logits_all[:n]
        ce = self._classifier._loss(logits, y)
        clean = [a[:n] for a in acts.values()]
        perturbed = [a[n:] for a in acts.values()]
        # a budget-0 pair (x, x) has the clean activations as its perturbed ones: it adds 0 to the numerator
        disparity = latent_disparity(clean, perturbed, self.normalization, self.p, rows=attacked)
        loss = (1.0 - self.xi) * ce + self.xi * disparity
        return loss, logits, {"ce": ce.detach(), "regularizer": disparity.detach()}
