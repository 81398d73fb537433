"""
Efficient layerwise adversarial training (Sankaranarayanan et al., AAAI 2018, paper 002, Algorithm 1): hidden
activations are perturbed by the sign of the gradient that reached them in the previous batch's backward pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from art_latent.capture import CallHooks, ModelTrace, split_ref
from art_latent.estimator import LatentClassifier
from art_latent.layers import LayerSpec, trace_execution_order
from art_latent.trainers.base import Batch, LatentTrainer
from art_latent.validation import check_choice, check_range

logger = logging.getLogger(__name__)

VARIANTS = ("orig", "joint", "fgs-inter")
_TINY = 1e-12


def perturbation_sites(model: nn.Module, example: torch.Tensor | None = None,
                       trace: ModelTrace | None = None) -> list[str]:
    """
    The default perturbation sites of paper 002 ("gradient accumulation layers"): the output of the BatchNorm of each
    convolutional block, or the convolution's output where no BatchNorm directly follows it. A network without
    convolutions gets the same rule for its hidden linear layers (the logits layer excluded).

    :param model: The network.
    :param example: An input batch it accepts (one traced forward pass, in eval mode, modes restored).
    :param trace: An eval-mode trace of the model to use instead of tracing `example`.
    :return: Qualified module names in execution order.
    :raises ValueError: If the model has no convolution and no hidden linear layer.
    """
    named = dict(model.named_modules())
    if trace is None:
        if example is None:
            raise ValueError("perturbation_sites needs an example input (or a trace) to trace the model.")
        order = trace_execution_order(model, example)
    else:
        order = [call.ref for call in trace.calls if call.leaf]
    modules = {ref: named[split_ref(ref)[0]] for ref in order}

    def sites_after(kinds: tuple[type, ...], skip_last: bool) -> list[str]:
        found = [i for i, name in enumerate(order) if isinstance(modules[name], kinds)]
        if skip_last:
            found = found[:-1]
        sites = []
        for i in found:
            following = order[i + 1] if i + 1 < len(order) else None
            if following is not None and isinstance(modules[following], nn.modules.batchnorm._BatchNorm):
                sites.append(following)
            else:
                sites.append(order[i])
        return list(dict.fromkeys(sites))

    sites = sites_after((nn.modules.conv._ConvNd,), skip_last=False)
    if not sites:
        sites = sites_after((nn.Linear,), skip_last=True)
    if not sites:
        raise ValueError("layers='auto' found no convolution and no hidden linear layer to perturb.")
    return sites


class LayerwisePerturbationTrainer(LatentTrainer):
    r"""
    Efficient layerwise adversarial training (paper 002, Algorithm 1 and §4.1).

    At each perturbation site :math:`c` (default: after the BatchNorm of each conv block), the forward pass of batch
    :math:`t` adds

    .. math::

       r_c^t = \epsilon_c\, \mathrm{sign}(g_c^{t-1}), \qquad
       \epsilon_c = \epsilon\,\bigl(\max g_c^{t-1} - \min g_c^{t-1}\bigr)

    where :math:`g_c^{t-1}` is the gradient of the loss that reached the site in the *previous* batch's backward pass
    (caught by a tensor hook: no extra backward pass). There is no perturbation for the first batch of ``fit`` nor
    for a batch whose shape differs from the previous one; the forward hooks exist only inside ``fit`` (prediction
    is never perturbed).

    Variants (§4.1): ``"orig"`` (Ours-orig: the loss on the perturbed forward pass only, :math:`\alpha = 0`, the cost
    of a plain step), ``"joint"`` (Ours-joint: :math:`\alpha\,J(x) + (1 - \alpha)\,J(x, R)`, one forward pass of the
    doubled batch, ~2x) and ``"fgs-inter"`` (FGS-inter: the same joint loss, with the perturbation computed from the
    *current* batch: a clean pass, the gradients at the sites, then the perturbed pass, ~2x).

    ``history`` records, per site, ``rel_size/<site>``: the RMS of the perturbation over the standard deviation of
    the site's activation (epoch mean, 0 for unperturbed batches), and ``perturbed``: the fraction of samples whose
    batch was perturbed.

    | Paper link: https://doi.org/10.1609/aaai.v32i1.11688 (arXiv: https://arxiv.org/abs/1705.07819)
    """

    def __init__(
        self,
        classifier: LatentClassifier,
        eps: float = 20.0,
        layers: LayerSpec = "auto",
        variant: str = "orig",
        alpha: float = 0.5,
        **trainer_kwargs: Any,
    ) -> None:
        """
        :param classifier: The classifier to train.
        :param eps: :math:`\\epsilon > 0`, the multiple of each site's gradient range (the paper cross-validates
                    10, 20, 30 and uses 20 when not stated; gradient ranges are ~1e-4 to 1e-2).
        :param layers: ``"auto"`` (see :func:`perturbation_sites`) or names / patterns / types / indices into
                       ``latent_layers``; each site is one call (``"relu#1"``: the second call in a forward pass).
        :param variant: ``"orig"``, ``"joint"`` or ``"fgs-inter"``.
        :param alpha: Weight :math:`\\alpha \\in [0, 1)` of the clean loss in ``"joint"`` and ``"fgs-inter"`` (0.5
                      in the paper); ``"orig"`` is :math:`\\alpha = 0` by definition and ignores it.
        :param trainer_kwargs: ``seed``, ``log_every``, ``amp``: see :class:`~art_latent.trainers.LatentTrainer`.
        """
        super().__init__(classifier, **trainer_kwargs)
        self.eps = check_range("eps", eps, 0.0, math.inf, low_open=True, high_open=True)
        self.variant = check_choice("variant", variant, VARIANTS)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0, high_open=True)
        if isinstance(layers, str) and layers == "auto":
            clf = self._classifier
            self.sites = perturbation_sites(clf.model, trace=clf.trace(training=False))
        else:
            self.sites = self._classifier.require_latent_layers(layers)
        self._state: str | None = None  # None: hooks are inert (validation, attacks, prediction)
        self._offset = 0
        self._seen: set[str] = set()
        self._outputs: dict[str, torch.Tensor] = {}
        self._current: dict[str, torch.Tensor] = {}
        self._logs: dict[str, torch.Tensor] = {}

    @property
    def regularized_layers(self) -> list[str]:
        """The perturbation sites."""
        return list(self.sites)

    # ------------------------------------------------------------------ hooks

    def fit_context(self) -> contextlib.AbstractContextManager:
        return self._hooked()

    @contextlib.contextmanager
    def _hooked(self) -> Iterator[None]:
        clf = self._classifier
        self._reset()
        try:
            # one hook per site's module, firing on the site's call only ("relu#1" leaves the relu's first call alone)
            with CallHooks(clf.model, self.sites, self._site_hook, roots=[clf.model, clf._model]):
                yield
        finally:
            self._reset()

    def _reset(self) -> None:
        self._state = None
        self._outputs, self._current, self._logs = {}, {}, {}
        self._seen = set()

    @contextlib.contextmanager
    def _forward(self, state: str, offset: int = 0) -> Iterator[None]:
        self._state, self._offset, self._seen = state, offset, set()
        try:
            yield
        finally:
            self._state = None
        missing = [name for name in self.sites if name not in self._seen]
        if missing:
            raise RuntimeError(f"Perturbation sites {missing} did not run in the forward pass.")

    def _site_hook(self, name: str, output: Any) -> torch.Tensor | None:
        state = self._state
        if state is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"Perturbation site {name!r} returns {type(output).__name__}, not a tensor.")
        self._seen.add(name)
        if state == "capture":
            self._outputs[name] = output
            # later in-place code (an in-place ReLU) would change the captured tensor: it works on a copy (always,
            # unless a trace of this mode shows no in-place change)
            return output.clone() if self._classifier.needs_copy(name) else None
        if state == "apply":
            perturbation = self._current[name]
            self._log_size(name, output, perturbation)
            return output + perturbation.to(output.dtype)
        # "cached": the perturbation of the previous batch's gradient, on rows [offset:]; the loop carries it from
        # step to step (and through checkpoints)
        offset = self._offset
        cached = self.carried.get(name)
        target_shape = (output.shape[0] - offset, *output.shape[1:])
        result = output
        if cached is not None and tuple(cached.shape) == target_shape:
            self._log_size(name, output[offset:], cached)
            perturbation = cached.to(output.dtype)
            if offset:
                perturbation = torch.cat([torch.zeros_like(output[:offset]), perturbation])
            result = output + perturbation
        else:
            self._logs[f"rel_size/{name}"] = torch.zeros((), device=output.device)
        if result.requires_grad:
            result.register_hook(self._gradient_hook(name, offset))
        return result

    def _gradient_hook(self, name: str, offset: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            g = grad[offset:].detach().float()
            scaler = self.loop.scaler
            if scaler is not None:  # fp16: the loss was scaled before backward
                get_scale = getattr(scaler, "_get_scale_async", None)
                g = g / (get_scale() if get_scale is not None else scaler.get_scale())
            if self.variant == "joint":
                g = g / (1.0 - self.alpha)  # the joint loss weights the perturbed copy by 1 - alpha
            self.carried[name] = self._perturbation(g)

        return hook

    def _perturbation(self, g: torch.Tensor) -> torch.Tensor:
        eps_l = self.eps * (g.amax() - g.amin())
        eps_l = torch.where(torch.isfinite(eps_l), eps_l, torch.zeros_like(eps_l))  # fp16 overflow: no perturbation
        return eps_l * g.sign()

    def _log_size(self, name: str, activation: torch.Tensor, perturbation: torch.Tensor) -> None:
        with torch.no_grad():
            rms = perturbation.float().square().mean().sqrt()
            std = activation.detach().float().std() if activation.numel() > 1 else torch.ones((), device=rms.device)
            self._logs[f"rel_size/{name}"] = rms / std.clamp_min(_TINY)
            self._logs["perturbed"] = torch.ones((), device=rms.device)

    # ------------------------------------------------------------------ step

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch["x"], batch["y"]
        model, loss_fn = self._classifier.model_logits, self._classifier._loss
        self._logs = {"perturbed": torch.zeros((), device=x.device)}
        x_pre = self._preprocess(x)
        n = len(x)
        if self.variant == "orig":
            with self._forward("cached"):
                logits = model(x_pre)
            loss = loss_fn(logits, y)
            return loss, logits, dict(self._logs)
        if self.variant == "joint":
            with self._forward("cached", offset=n):
                logits_all = model(torch.cat([x_pre, x_pre]))
            logits, logits_perturbed = logits_all[:n], logits_all[n:]
            ce_clean = loss_fn(logits, y)
        else:
            with self._forward("capture"):
                logits = model(x_pre)
            ce_clean = loss_fn(logits, y)
            outputs = [self._outputs[name] for name in self.sites]
            grads = torch.autograd.grad(ce_clean, outputs, retain_graph=True, allow_unused=True)
            self._outputs = {}
            self._current = {
                name: torch.zeros_like(out) if g is None else self._perturbation(g.detach().float())
                for name, out, g in zip(self.sites, outputs, grads, strict=True)
            }
            with self._forward("apply"):
                logits_perturbed = model(x_pre)
            self._current = {}
        ce_perturbed = loss_fn(logits_perturbed, y)
        loss = self.alpha * ce_clean + (1.0 - self.alpha) * ce_perturbed
        logs = dict(self._logs)
        logs.update({"ce_clean": ce_clean.detach(), "ce_perturbed": ce_perturbed.detach()})
        return loss, logits, logs

    # ------------------------------------------------------------------ checkpoints

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "cache" in state:  # checkpoints written before the loop carried the perturbations
            self.carried.update({name: value.to(self.device) for name, value in state["cache"].items()})
