"""
:class:`AFDTrainer`: Adversarial Feature Desensitization (Bashivan et al., NeurIPS 2021), and its default
discriminator :class:`ProjectionDiscriminator`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.functional import relu, softplus

from art_latent.analysis.representation import EmbeddingSite, forward_with_embedding, resolve_embedding
from art_latent.estimator import LatentClassifier
from art_latent.perturbations import PerturbationSource
from art_latent.trainers.base import Batch, LatentTrainer, TrainingDivergedError
from art_latent.utils import preserve_mode
from art_latent.validation import check_choice, check_int, check_range

logger = logging.getLogger(__name__)

LOSSES = ("softplus", "wgan", "hinge")

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]


class AFDDivergenceError(TrainingDivergedError):
    """AFD training produced a NaN or infinite loss or gradient; the message names the step, epoch and batch."""


class ProjectionDiscriminator(nn.Module):
    r"""
    AFD's adversarial discriminator :math:`D_a(h, y)` (paper 001, section 3.2; the authors' ``SNPDFC3``): two hidden
    spectral-normalized linear layers with LeakyReLU(0.2), then a projection output (Miyato & Koyama 2018)

    .. math:: D_a(h, y) = w^\top \phi(h) + b + e_y^\top \phi(h)

    with :math:`\phi(h)` the last hidden features and :math:`e_y` a (spectral-normalized) class embedding. Positive
    scores mean "clean", negative "perturbed".
    """

    def __init__(
        self, in_features: int, nb_classes: int, width: int | None = None, negative_slope: float = 0.2
    ) -> None:
        """
        :param in_features: Size of the embedding :math:`h`.
        :param nb_classes: Number of classes (rows of the class embedding).
        :param width: Hidden units; ``None``: `in_features` (the authors' choice, which gives the paper's 64 for
                      MNIST and 512 for CIFAR with their networks).
        :param negative_slope: LeakyReLU slope (0.2).
        """
        super().__init__()
        in_features = check_int("in_features", in_features)
        nb_classes = check_int("nb_classes", nb_classes)
        width = in_features if width is None else check_int("width", width)
        self.negative_slope = check_range("negative_slope", negative_slope, 0.0, 1.0)
        sn = nn.utils.parametrizations.spectral_norm
        out = nn.Linear(width, 1)
        embed = nn.Embedding(nb_classes, width)
        nn.init.xavier_uniform_(out.weight)
        nn.init.xavier_uniform_(embed.weight)
        self.fc1 = sn(nn.Linear(in_features, width))
        self.fc2 = sn(nn.Linear(width, width))
        self.out = sn(out)
        self.embed = sn(embed)
        self.in_features, self.nb_classes, self.width = in_features, nb_classes, width

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """
        :param h: Embeddings ``(n, in_features)`` (further dimensions are flattened).
        :param y: Class indices ``(n,)``.
        :return: Scores ``(n,)``.
        """
        features = nn.functional.leaky_relu(self.fc1(h.flatten(1)), self.negative_slope)
        features = nn.functional.leaky_relu(self.fc2(features), self.negative_slope)
        return self.out(features).squeeze(1) + (self.embed(y) * features).sum(1)


def discriminator_loss(d_clean: torch.Tensor, d_adv: torch.Tensor, loss: str = "softplus") -> torch.Tensor:
    r"""
    The discriminator's loss (clean embeddings are "real", perturbed ones "fake").

    * ``"softplus"`` (paper 001, eq. 2 and Alg. 1): :math:`\overline{S(-D_a(h))} + \overline{S(D_a(h'))}`;
    * ``"wgan"`` (the authors' code default, ``wgan_gp`` with a zero penalty weight):
      :math:`\overline{D_a(h')} - \overline{D_a(h)}`;
    * ``"hinge"``: :math:`\overline{\max(0, 1 - D_a(h))} + \overline{\max(0, 1 + D_a(h'))}`.

    :param d_clean: Scores of clean embeddings ``(n,)``.
    :param d_adv: Scores of perturbed embeddings ``(n,)``.
    :param loss: ``"softplus"``, ``"wgan"`` or ``"hinge"``.
    :return: The scalar loss.
    """
    check_choice("loss", loss, LOSSES)
    if loss == "softplus":
        return softplus(-d_clean).mean() + softplus(d_adv).mean()
    if loss == "wgan":
        return d_adv.mean() - d_clean.mean()
    return relu(1.0 - d_clean).mean() + relu(1.0 + d_adv).mean()


def encoder_loss(d_adv: torch.Tensor, loss: str = "softplus") -> torch.Tensor:
    r"""
    The embedding's loss on perturbed inputs: make the discriminator call them clean.

    ``"softplus"`` (Alg. 1): :math:`\overline{S(-D_a(h'))}`; ``"wgan"`` and ``"hinge"``: :math:`-\overline{D_a(h')}`.

    :param d_adv: Scores of perturbed embeddings ``(n,)``.
    :param loss: ``"softplus"``, ``"wgan"`` or ``"hinge"``.
    :return: The scalar loss.
    """
    check_choice("loss", loss, LOSSES)
    if loss == "softplus":
        return softplus(-d_adv).mean()
    return -d_adv.mean()


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class AFDTrainer(LatentTrainer):
    r"""
    Adversarial Feature Desensitization (AFD, paper 001, Alg. 1): an adversarial game between the embedding
    :math:`E` (the network up to the input of its final linear layer) and a discriminator :math:`D_a` that tells
    clean from adversarial embeddings, conditioned on the label. Per batch, in this order:

    1. :math:`x' = \pi(x, \epsilon)` with `attack` (PGD-Linf in the paper), model in eval mode, no parameter
       gradients;
    2. classification step: :math:`\mathrm{CE}(D_c(E(x)), y)` on the clean batch, the classifier's own optimizer
       (all parameters, :math:`E` and decoder :math:`D_c`);
    3. discriminator step: :func:`discriminator_loss` of :math:`D_a(E(x), y)` and :math:`D_a(E(x'), y)`, with the
       discriminator optimizer;
    4. embedding step: :func:`encoder_loss` of :math:`D_a(E(x'), y)` on the adversarial inputs only, with the
       encoder optimizer, whose parameters are exactly those :math:`E` depends on (the decoder and :math:`D_a` get
       no update).

    The embeddings of step 3 come from one forward each for :math:`x` (no graph) and :math:`x'`; step 4 reuses the
    graph of :math:`E(x')` (the encoder does not change in step 3), so no forward is repeated. ``history`` records
    ``ce``, ``discriminator_loss``, ``encoder_loss`` and the discriminator's accuracy on clean and adversarial
    embeddings (``disc_acc_clean``: share of :math:`D_a(E(x)) > 0`; ``disc_acc_adv``: share of
    :math:`D_a(E(x')) < 0`), the health signal of the paper's Fig. A5; ``loss`` is the cross-entropy.

    | Paper link: https://papers.neurips.cc/paper/2021/hash/587b7b833034299fdd5f4b10e7dc9fca-Abstract.html
      (arXiv: https://arxiv.org/abs/2006.04621)
    """

    # Always set after construction: __init__ calls set_attack() (the base class allows None for methods without one).
    attack: PerturbationSource
    layers_argument = "embedding_layer"

    def __init__(
        self,
        classifier: LatentClassifier,
        attack: Any,
        embedding_layer: str | int | None = None,
        discriminator: nn.Module | None = None,
        loss: str = "softplus",
        lr_encoder: float | None = None,
        lr_discriminator: float | None = None,
        discriminator_width: int | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        fast_attack: bool = True,
        validation_attack: Any = "attack",
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier; its optimizer makes the classification step (learning rate
                           :math:`\\alpha`, ``LR_EDc`` in the paper).
        :param attack: The perturbation :math:`\\pi`: any ART evasion attack on `classifier` (PGD-Linf in the
                       paper) or a :class:`~art_latent.perturbations.PerturbationSource`.
        :param embedding_layer: ``None`` (default, the paper): the input of the final ``torch.nn.Linear``; or a
                                module name (or index into ``latent_layers``) whose output is the embedding.
        :param discriminator: :math:`D_a`, a module ``(h, y) -> scores (n,)``; default: a
                              :class:`ProjectionDiscriminator` sized from the embedding.
        :param loss: ``"softplus"`` (paper, eq. 2), ``"wgan"`` (the authors' code default) or ``"hinge"``.
        :param lr_encoder: Learning rate :math:`\\gamma` of the embedding step, > 0; ``None``: the classifier's.
        :param lr_discriminator: Learning rate :math:`\\beta` of the discriminator step, > 0; ``None``: the
                                 classifier's.
        :param discriminator_width: Hidden width of the default discriminator; ``None``: the embedding size.
        :param optimizer_factory: ``factory(params, lr) -> Optimizer`` for the encoder and discriminator optimizers;
                                  default: the classifier optimizer's class and settings (weight decay 0).
        :param fast_attack: Use the on-device torch path for ART's FGSM/BIM/PGD.
        :param validation_attack: ``"attack"`` (default: `attack` at its budget), ``None``, or an ART attack /
                                  perturbation source for the robust validation accuracy.
        :param trainer_kwargs: ``seed``, ``log_every``, ``amp``: see :class:`~art_latent.trainers.LatentTrainer`.
        """
        super().__init__(classifier, validation_attack=validation_attack, **trainer_kwargs)
        self.set_attack(attack, fast=fast_attack)
        self.loss = check_choice("loss", loss, LOSSES)
        group = self._classifier.optimizer.param_groups[0]
        base_lr = float(group.get("initial_lr", group["lr"]))
        inf = float("inf")
        self.lr_encoder = base_lr if lr_encoder is None else check_range(
            "lr_encoder", lr_encoder, 0.0, inf, low_open=True, high_open=True)
        self.lr_discriminator = base_lr if lr_discriminator is None else check_range(
            "lr_discriminator", lr_discriminator, 0.0, inf, low_open=True, high_open=True)
        if discriminator_width is not None:
            check_int("discriminator_width", discriminator_width)
        if discriminator is not None and discriminator_width is not None:
            raise ValueError("`discriminator_width` sizes the default discriminator; it cannot be combined with "
                             "a given `discriminator`.")
        if optimizer_factory is not None and not callable(optimizer_factory):
            raise TypeError(f"`optimizer_factory` must be callable, got {type(optimizer_factory).__name__}.")
        self.embedding: EmbeddingSite = resolve_embedding(
            self._classifier, embedding_layer, argument="embedding_layer"
        )
        encoder_params, features = self._trace_encoder()
        if discriminator is None:
            discriminator = ProjectionDiscriminator(features, self._classifier.nb_classes, discriminator_width)
        elif not isinstance(discriminator, nn.Module):
            raise TypeError(f"`discriminator` must be a torch.nn.Module, got {type(discriminator).__name__}.")
        self.discriminator = discriminator.to(self.device)
        self._check_discriminator(features)
        self.encoder_parameters = encoder_params
        self.optimizer_factory = optimizer_factory
        self.encoder_optimizer = self._make_optimizer(encoder_params, self.lr_encoder, "encoder")
        self.discriminator_optimizer = self._make_optimizer(
            list(self.discriminator.parameters()), self.lr_discriminator, "discriminator"
        )

    # ------------------------------------------------------------------ construction helpers

    @property
    def regularized_layers(self) -> list[str]:
        """
        The embedding's layer when it is a module output; none for the default site (the *input* of the final
        linear layer, which no module call returns as such: the latent attack then uses ``latent_layers``).
        """
        return [] if self.embedding.use_input else [self.embedding.name]

    def _trace_encoder(self) -> tuple[list[nn.Parameter], int]:
        """The trainable parameters the embedding depends on (one traced pass in eval mode) and its size."""
        model = self._classifier.model
        params = [p for p in model.parameters() if p.requires_grad]
        example = torch.zeros((2, *self._classifier.input_shape), device=self.device)
        with preserve_mode(model), torch.enable_grad():
            model.eval()
            try:
                _, h = forward_with_embedding(self._classifier, example, self.embedding)
            except RuntimeError as error:
                if "did not run" not in str(error):
                    raise
                raise ValueError(f"`embedding_layer` {self.embedding.name!r} never runs in the model's forward "
                                 f"pass: {error}") from error
            grads = torch.autograd.grad(h.sum(), params, allow_unused=True) if h.requires_grad else [None] * len(params)
        encoder = [p for p, g in zip(params, grads, strict=True) if g is not None]
        if not encoder:
            raise ValueError(f"`embedding_layer` {self.embedding.name!r} depends on no trainable parameter of the "
                             "`classifier`'s model.")
        if len(encoder) == len(params):
            logger.warning("Every trainable parameter feeds the embedding: the decoder has no parameters.")
        return encoder, int(h.shape[1])

    def _check_discriminator(self, features: int) -> None:
        h = torch.zeros((2, features), device=self.device)
        y = torch.zeros(2, dtype=torch.long, device=self.device)
        with preserve_mode(self.discriminator), torch.no_grad():
            self.discriminator.eval()
            scores = self.discriminator(h, y)
        if scores.shape not in ((2,), (2, 1)):
            raise ValueError(f"The discriminator must map (n, {features}) embeddings and labels to scores (n,), "
                             f"got shape {tuple(scores.shape)}.")

    def _make_optimizer(self, params: list[nn.Parameter], lr: float, name: str) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(params, lr)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"`optimizer_factory` must return a torch.optim.Optimizer, got "
                                f"{type(optimizer).__name__}.")
            return optimizer
        template = self._classifier.optimizer
        settings = dict(template.defaults)
        settings["lr"] = lr
        if "weight_decay" in settings:
            settings["weight_decay"] = 0.0
        try:
            return type(template)(params, **settings)
        except TypeError as error:
            raise TypeError(f"Could not build the {name} optimizer as a {type(template).__name__} with the "
                            f"classifier optimizer's settings ({error}); pass `optimizer_factory`.") from error

    # ------------------------------------------------------------------ the three steps

    def _sync_learning_rates(self) -> None:
        # A scheduler given to fit steps the classifier optimizer; the other two follow by the same factor.
        group = self._classifier.optimizer.param_groups[0]
        initial = group.get("initial_lr")
        scale = group["lr"] / initial if initial else 1.0
        for optimizer, lr in ((self.encoder_optimizer, self.lr_encoder),
                              (self.discriminator_optimizer, self.lr_discriminator)):
            for g in optimizer.param_groups:
                g["lr"] = lr * scale

    def classification_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Step 2: cross-entropy on the clean batch, classifier optimizer (embedding and decoder).

        :param batch: ``"x"``, ``"y"``.
        :return: ``(ce, logits)``, detached.
        """
        optimizer = self._classifier.optimizer
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            ce, logits, _ = self.training_step(batch)
        self.backward_and_step(ce, optimizer, name="classification loss")
        return ce.detach(), logits.detach()

    def discriminator_step(
        self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """
        Step 3: one discriminator update on the clean and adversarial embeddings.

        :param x: Clean inputs.
        :param x_adv: Adversarial inputs.
        :param y: Labels.
        :return: ``(h_adv, loss, logs)``: the adversarial embedding **with** its graph (for the embedding step),
                 the detached loss and the discriminator accuracies.
        """
        n = len(y)
        with self.autocast():
            with torch.no_grad():
                h_clean = forward_with_embedding(self._classifier, x, self.embedding)[1]
            h_adv = forward_with_embedding(self._classifier, x_adv, self.embedding)[1]
            scores = self.discriminator(torch.cat([h_clean, h_adv.detach()]), torch.cat([y, y])).reshape(-1)
            d_clean, d_adv = scores[:n], scores[n:]
            loss = discriminator_loss(d_clean, d_adv, self.loss)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        self.backward_and_step(loss, self.discriminator_optimizer, name="discriminator loss")
        with torch.no_grad():
            logs = {"disc_acc_clean": (d_clean > 0).float().mean(), "disc_acc_adv": (d_adv < 0).float().mean()}
        return h_adv, loss.detach(), logs

    def encoder_step(self, h_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """
        Step 4: one update of the embedding parameters only, on the adversarial embeddings.

        :param h_adv: Adversarial embeddings with their graph (from :meth:`discriminator_step`).
        :param y: Labels.
        :return: The detached loss.
        """
        with self.autocast(), _no_param_grads(self.discriminator):
            loss = encoder_loss(self.discriminator(h_adv, y).reshape(-1), self.loss)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        self.backward_and_step(loss, self.encoder_optimizer, name="encoder loss")
        return loss.detach()

    def optimization_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """
        One AFD iteration (Alg. 1): attack, classification, discriminator and embedding steps, in this order.

        :param batch: ``"x"``, ``"y"``.
        :return: ``(ce, clean logits, logs)``.
        """
        x, y = batch["x"], batch["y"]
        self._sync_learning_rates()
        x_adv = self.attack.generate(x, y)
        ce, logits = self.classification_step(batch)
        h_adv, d_loss, logs = self.discriminator_step(x, x_adv, y)
        e_loss = self.encoder_step(h_adv, y)
        logs.update({"ce": ce, "discriminator_loss": d_loss, "encoder_loss": e_loss})
        return ce, logits, logs

    # ------------------------------------------------------------------ divergence

    divergence_error = AFDDivergenceError

    def divergence_advice(self, terms: Sequence[str]) -> str:
        advice = {
            "discriminator": "lower `lr_discriminator` or use loss='softplus'/'hinge'",
            "encoder": "lower `lr_encoder` or use loss='softplus'/'hinge'",
        }
        for term in terms:
            for step, text in advice.items():
                if step in term:
                    return text
        return "lower the classifier optimizer's learning rate"

    def trained_modules(self) -> list[nn.Module]:
        return [self._classifier.model, self.discriminator]

    def checkpointed_networks(self) -> dict[str, nn.Module]:
        """The discriminator (``state_dict()["discriminator"]``)."""
        return {"discriminator": self.discriminator}

    @contextlib.contextmanager
    def fit_context(self) -> Iterator[None]:
        """The discriminator in train mode during ``fit`` (mode restored)."""
        dist = self.loop.distributed
        if dist is not None:  # data-parallel: every process starts from rank 0's discriminator, as for the model
            dist.broadcast_module(self.discriminator)
        with preserve_mode(self.discriminator):
            self.discriminator.train()
            yield

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "discriminator": self.discriminator.state_dict(),
            "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
            "encoder_optimizer": self.encoder_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.encoder_optimizer.load_state_dict(state["encoder_optimizer"])
