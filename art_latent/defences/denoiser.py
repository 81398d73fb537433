"""
:class:`DenoiserTrainer`: trains the feature-guided denoiser (HGD, Liao et al. 2018), a baseline of paper 000, with
the classifier frozen. The denoiser itself is :class:`~art_latent.defences.feature_guided.FeatureGuidedDenoiser` (an
ART ``PreprocessorPyTorch``) around a :class:`~art_latent.defences.unet.DenoisingUNet`; both are importable from here
too, as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from art.estimators.classification.pytorch import PyTorchClassifier
from torch import nn

from art_latent.defences.feature_guided import FeatureGuidedDenoiser
from art_latent.defences.unet import DenoisingUNet
from art_latent.estimator import LatentClassifier
from art_latent.perturbations import GaussianNoiseSource, PerturbationSource, budget_pairs
from art_latent.regularizers.disparity import NORMALIZATIONS, latent_disparity
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.trainers.sample_state import SampleState
from art_latent.utils import preserve_mode
from art_latent.validation import check_budget_units, check_choice, check_int, check_range

logger = logging.getLogger(__name__)

__all__ = ["DenoiserTrainer", "DenoisingUNet", "FeatureGuidedDenoiser"]

REGENERATE = ("never", "epoch", "batch")
LAST_CONV = "last_conv"
LOGITS = "logits"


class DenoiserTrainer(LatentTrainer):
    r"""
    Train a :class:`FeatureGuidedDenoiser` with the classifier frozen (Liao et al.'s HGD; paper 000's baseline):

    .. math::
        L = \frac{1}{|s_f|}\,\big\| s_f(x_a - D(x_a)) - s_f(x) \big\|_1

    averaged over the batch, where :math:`s_f` is the classifier's activation at `guide_layer`: by default the
    output of the last convolutional block (the feature-guided denoiser, FGD, the variant paper 000 uses);
    ``"logits"`` gives the logits-guided denoiser (LGD). ``normalization="batch"`` (or ``"layer"``, ``"sample"``)
    replaces the mean absolute error by HLDR's :func:`~art_latent.regularizers.latent_disparity` of the guide layer.

    The pairs :math:`(x, x_a)` are HLDR's fine-tuning set: one per budget of `budgets` made by `attack` (on the
    classifier given here, precomputed once at the start of ``fit`` by default), plus Gaussian-noise pairs with
    `noise_sigma` (paper 000's :math:`\mathbb{D}_\mathcal{N}`). The clean targets :math:`s_f(x)` are constant (the
    classifier is frozen) and are computed once per sample, in eval mode, without the denoiser.

    During ``fit`` the classifier's parameters have ``requires_grad`` off and the model is in eval mode (BatchNorm
    running statistics stay untouched); both are restored afterwards, also on exceptions. Only the denoiser's
    optimizer (Adam, lr 1e-3 by default, as Liao et al.) steps.

    The trainer works on a *defended* :class:`~art_latent.estimator.LatentClassifier` (:meth:`get_classifier`): the same
    model, with the denoiser as a preprocessing defence (first, unless the given classifier already holds it) and
    the denoiser's optimizer. Its validation accuracy in ``history`` is the defended model's; ``val_robust_accuracy``
    (with the default ``validation_attack="attack"``) attacks the *undefended* classifier and classifies the denoised
    result (Liao et al.'s gray-box setting). The training ``accuracy`` is the defended model's on the pairs'
    perturbed members. Checkpoints hold the denoiser and its optimizer.

    | Paper link: https://arxiv.org/abs/1712.02976 (Liao et al.); paper 000: https://arxiv.org/abs/2110.05419
    """

    # Always set after construction: __init__ calls set_attack() (the base class allows None for methods without one).
    attack: PerturbationSource
    layers_argument = "guide_layer"

    def __init__(
        self,
        classifier: LatentClassifier | PyTorchClassifier,
        denoiser: FeatureGuidedDenoiser,
        attack: Any,
        guide_layer: str | int = LAST_CONV,
        budgets: Sequence[float] | None = (0.0, 16 / 255, 32 / 255),
        noise_sigma: float | None = None,
        regenerate: str = "never",
        normalization: str | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        learning_rate: float = 1e-3,
        fast_attack: bool = True,
        generation_batch_size: int = 512,
        validation_attack: Any = "attack",
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The (pre-trained) classifier to defend; it is not modified.
        :param denoiser: The denoiser to train.
        :param attack: The attack making :math:`x_a`: an ART evasion attack on `classifier` (FGSM in paper 000) or a
                       :class:`~art_latent.perturbations.PerturbationSource`.
        :param guide_layer: ``"last_conv"`` (FGD: the last latent layer with spatial output), ``"logits"`` (LGD), or
                            a module name / index into the classifier's ``latent_layers``.
        :param budgets: Attack budgets :math:`\\epsilon \\ge 0`, one pair per sample and budget (0 gives
                        :math:`(x, x)`); ``None``: the attack's own eps.
        :param noise_sigma: Standard deviation of extra Gaussian-noise pairs (32/255 for paper 000's
                            :math:`\\mathbb{D}_\\mathcal{N}`); ``None`` adds none.
        :param regenerate: ``"never"`` (precompute on the classifier, paper 000), ``"epoch"`` or ``"batch"``.
        :param normalization: ``None`` (mean absolute error, Liao et al.) or a
                              :func:`~art_latent.regularizers.latent_disparity` normalization.
        :param optimizer: An optimizer over the denoiser's parameters; default ``Adam(lr=learning_rate)``.
        :param learning_rate: Learning rate of the default optimizer (> 0).
        :param fast_attack: Use the on-device torch path for ART's FGSM/BIM/PGD.
        :param generation_batch_size: Batch size when precomputing pairs and targets.
        :param validation_attack: ``"attack"`` (default: `attack` at its own eps), ``None``, or an ART attack /
                                  perturbation source for ``val_robust_accuracy``.
        :param trainer_kwargs: ``seed``, ``log_every``, ``amp``: see :class:`~art_latent.trainers.base.LatentTrainer`.
        """
        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(
                f"`classifier` must be an art_latent LatentClassifier or ART PyTorchClassifier, got "
                f"{type(classifier).__name__}."
            )
        if not isinstance(denoiser, FeatureGuidedDenoiser):
            raise TypeError(f"`denoiser` must be a FeatureGuidedDenoiser, got {type(denoiser).__name__}.")
        if budgets is not None:
            budgets = tuple(budgets)
            if not budgets:
                raise ValueError("`budgets` is empty: give at least one budget (0 gives benign pairs).")
            budgets = tuple(check_range("budgets", b, 0.0, math.inf, high_open=True) for b in budgets)
            check_budget_units("budgets", list(budgets), getattr(classifier, "clip_values", None))
        if noise_sigma is not None:
            noise_sigma = check_range("noise_sigma", noise_sigma, 0.0, math.inf, low_open=True, high_open=True)
            check_budget_units("noise_sigma", noise_sigma, getattr(classifier, "clip_values", None),
                               "standard deviation")
        regenerate = check_choice("regenerate", regenerate, REGENERATE)
        if normalization is not None:
            check_choice("normalization", normalization, NORMALIZATIONS)
        learning_rate = check_range("learning_rate", learning_rate, 0.0, math.inf, low_open=True, high_open=True)
        generation_batch_size = check_int("generation_batch_size", generation_batch_size)
        if not classifier.channels_first:
            raise ValueError("The denoiser is a channels-first convolutional network; the classifier must be "
                             "channels_first=True.")
        if classifier.input_shape[0] != denoiser.network.in_channels:
            raise ValueError(f"The denoiser has {denoiser.network.in_channels} input channels but the classifier's "
                             f"input_shape is {classifier.input_shape}.")
        denoiser.to(classifier.device)
        if optimizer is None:
            optimizer = torch.optim.Adam(denoiser.parameters(), lr=learning_rate)
        else:
            own = {id(p) for p in denoiser.parameters()}
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if not params or any(id(p) not in own for p in params):
                raise ValueError("`optimizer` must optimize the denoiser's parameters only (the classifier is "
                                 "frozen); build it from denoiser.parameters().")
        self.denoiser = denoiser
        defences = list(classifier.preprocessing_defences or [])
        others = [d for d in defences if d is not denoiser]
        self._plain = self._rebuild(classifier, others, None)
        defended = self._rebuild(classifier, defences if len(others) < len(defences) else [denoiser, *others],
                                 optimizer)
        if not defended.all_framework_preprocessing:
            raise ValueError("Every preprocessing step of the classifier must be a PreprocessorPyTorch for gradients "
                             "to flow through the denoiser.")

        super().__init__(defended, validation_attack=validation_attack, **trainer_kwargs)
        source = self.set_attack(attack, fast=fast_attack)
        if budgets is None:
            if source.eps is None:
                raise ValueError("`budgets=None` uses the attack's own eps, but this attack has none; give budgets.")
            budgets = (source.eps,)
        if any(b > 0 for b in budgets) and source.eps is None:
            raise ValueError(f"The attack {type(attack).__name__} has no `eps` to set per budget; use budgets=None.")
        self.budgets: tuple[float, ...] = budgets
        self.noise = (None if noise_sigma is None
                      else GaussianNoiseSource(sigma=noise_sigma, clip_values=self._classifier.clip_values))
        self.regenerate = regenerate
        self.normalization = normalization
        self.generation_batch_size = generation_batch_size
        self.guide_layer = self._resolve_guide(guide_layer)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _rebuild(classifier: PyTorchClassifier, defences: list, optimizer: Any) -> LatentClassifier:
        return LatentClassifier(
            classifier.model,
            classifier._loss,
            classifier.input_shape,
            classifier.nb_classes,
            optimizer=optimizer,
            channels_first=classifier.channels_first,
            clip_values=classifier.clip_values,
            preprocessing_defences=defences or None,
            postprocessing_defences=classifier.postprocessing_defences,
            preprocessing=classifier.preprocessing,
            device_type="cpu" if classifier.device.type == "cpu" else "gpu",
            layers=getattr(classifier, "layers", "auto"),
            output_key=getattr(classifier, "output_key", None),
            logits_fn=getattr(classifier, "logits_fn", None),
        )

    @property
    def regularized_layers(self) -> list[str]:
        """The guide layer whose activations the denoiser matches (none for the logits-guided variant)."""
        return [] if self.guide_layer == LOGITS else [self.guide_layer]

    def _resolve_guide(self, guide_layer: str | int) -> str:
        if guide_layer == LOGITS:
            return LOGITS
        if guide_layer != LAST_CONV:
            names = self._plain.layer_refs(guide_layer, argument="guide_layer")
            if len(names) != 1:
                raise ValueError(f"`guide_layer` must name one layer, {guide_layer!r} matches {names}.")
            return names[0]
        # The last latent layer (in execution order) whose output keeps spatial dimensions.
        with preserve_mode(self._plain.model), torch.no_grad(), self._plain.latents() as store:
            self._plain.model.eval()
            x_pre = self._plain._preprocess_example(self._plain._example_input())
            self._plain.model(x_pre)
            spatial = [name for name, out in store.items() if isinstance(out, torch.Tensor) and out.ndim >= 3]
        if not spatial:
            raise ValueError("The classifier has no latent layer with a spatial output (no convolutional layer); "
                             "pass `guide_layer` explicitly (a name or 'logits').")
        logger.info("Feature-guided denoiser: guide layer %s.", spatial[-1])
        return spatial[-1]

    # ------------------------------------------------------------------ pairs and targets

    def _guide(self, classifier: LatentClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward through `classifier` (with its preprocessing): ``(logits, guide activation)``."""
        if self.guide_layer == LOGITS:
            logits = classifier.model_logits(classifier._apply_preprocessing(x, None, fit=False, no_grad=False)[0])
            return logits, logits
        logits, acts = classifier.forward_with_latents(x, [self.guide_layer])
        return logits, acts[self.guide_layer]

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """
        The guide activations :math:`s_f(x)` of clean inputs: classifier without the denoiser, eval mode, no grad.

        :param x: Clean inputs on the device.
        :return: The detached activations, first dimension ``len(x)``.
        """
        model = self._plain.model
        outputs = []
        with preserve_mode(model), torch.no_grad():
            model.eval()
            for begin in range(0, len(x), self.generation_batch_size):
                outputs.append(self._guide(self._plain, x[begin : begin + self.generation_batch_size])[1])
        return torch.cat(outputs)

    def sample_state(self) -> SampleState:
        """The pairs and their clean targets, made by :meth:`make_pairs` and remade as `regenerate` says."""
        return SampleState(self.make_pairs, self.regenerate, len(self.budgets) + (self.noise is not None),
                           "denoiser pairs", repeats=("y",))

    def checkpointed_networks(self) -> dict[str, nn.Module]:
        """The denoiser's network (``state_dict()["denoiser"]``)."""
        return {"denoiser": self.denoiser.network}

    def make_pairs(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> Batch:
        """
        Build the training pairs of `x` (the layout of :meth:`HLDRTrainer.make_pairs
        <art_latent.trainers.hldr.HLDRTrainer.make_pairs>`: grouped by budget, then the noise pairs).

        :param x: Clean inputs on the device.
        :param y: Class indices.
        :param target: The clean targets of `x` when already known (:meth:`targets`).
        :return: ``{"x_pair", "y", "target"}``, ``len(budgets)`` (+1 with noise) times as long as `x`.
        """
        pairs = budget_pairs(self.attack, x, y, self.budgets, self.noise, self.generation_batch_size)
        copies = len(self.budgets) + (self.noise is not None)
        target = self.targets(x) if target is None else target
        return {"x_pair": pairs["x_pair"], "y": pairs["y"],
                "target": target.repeat(copies, *([1] * (target.ndim - 1)))}

    # ------------------------------------------------------------------ step

    def optimization_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        # The loop puts the model in train mode every epoch: the frozen classifier must stay in eval mode.
        self._classifier.model.eval()
        self.denoiser.network.train()
        return super().optimization_step(batch)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits, guide = self._guide(self._classifier, batch["x_pair"])
        target = batch["target"]
        if self.normalization is None:
            loss = (guide.float() - target.float()).abs().mean()
        else:
            loss = latent_disparity([target], [guide], self.normalization, 1)
        return loss, logits, {}

    def trained_modules(self) -> list[nn.Module]:
        return [self.denoiser.network]  # the classifier is frozen

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
        with preserve_mode(self.denoiser.network):
            self.denoiser.network.eval()
            return super().evaluate(x, y, batch_size)

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        params = list(self._classifier.model.parameters())
        flags = [p.requires_grad for p in params]
        with preserve_mode(self.denoiser.network):
            try:
                for p in params:
                    p.requires_grad_(False)
                yield
            finally:
                for p, flag in zip(params, flags, strict=True):
                    p.requires_grad_(flag)
        self.denoiser._is_fitted = True

    def fit_context(self) -> contextlib.AbstractContextManager:
        return self._frozen()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"denoiser": {k: v.detach().cpu() for k, v in self.denoiser.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.denoiser.network.load_state_dict(state["denoiser"])

