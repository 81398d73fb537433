"""
Layer Sustainability Analysis (LSA) of paper 004 (Khalooei et al.): per-layer relative error of the representations
of clean and perturbed inputs, and the list of most vulnerable layers (MVL) that AT-LR regularizes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from art.estimators.classification.pytorch import PyTorchClassifier
from tqdm.auto import tqdm

from art_latent.estimator import LatentClassifier
from art_latent.io import save_figure
from art_latent.layers import LEARNABLE_TYPES, LayerSpec
from art_latent.perturbations import GaussianNoiseSource, PerturbationSource, as_perturbation_source
from art_latent.perturbations.noise import NoiseSource
from art_latent.regularizers.relative_error import relative_error
from art_latent.utils import preserve_mode
from art_latent.validation import check_choice, check_data, check_int, check_range

logger = logging.getLogger(__name__)

DEFAULT_ETA = 0.5
#: How :meth:`LayerSustainabilityAnalysis.run` reduces the relative error: per sample, or one ratio per batch.
LSA_REDUCTIONS = ("sample", "batch")
#: The module types the authors' LSA code hooks (``selected_probs``: ReLU, ELU, LeakyReLU).
AUTHORS_ACTIVATION_TYPES: tuple[type[torch.nn.Module], ...] = (torch.nn.ReLU, torch.nn.ELU, torch.nn.LeakyReLU)


def learnable_layers(classifier: LatentClassifier, include_logits: bool = False) -> list[str]:
    """
    The "learnable layers" of paper 004: every conv/linear layer, measured at its activation output.

    This is the ``"auto"`` rule of :func:`art_latent.layers.auto_layers` (a conv/linear module extended over the
    normalization and activation modules that follow it), which, like the authors' LSA code (hooks on the ReLU/ELU
    modules), leaves out the logits layer; `include_logits` appends it (its raw output).

    :param classifier: The classifier.
    :param include_logits: Also measure the logits layer.
    :return: Qualified module names in execution order.
    """
    names = classifier.layer_refs("auto")
    if include_logits:
        trace = classifier.trace(training=False)
        learnable = [call.ref for call in trace.calls if call.leaf and isinstance(call.module, LEARNABLE_TYPES)]
        names.append(learnable[-1])
    return names


def activation_layers(classifier: LatentClassifier) -> list[str]:
    """
    The layers the authors' LSA code measures: the output of every ``ReLU``, ``ELU`` and ``LeakyReLU`` module call, in
    execution order (their code registers a forward hook on each such module and collects the outputs in call order;
    a module called twice gives two entries, ``"act"`` and ``"act#1"``).

    On a network where each conv/linear layer is followed by one of these activations (paper 004's model A and B)
    this equals :func:`learnable_layers`; it differs where a learnable layer has no such activation after it (a bare
    conv, a GELU/Tanh network) or an activation follows something else (a residual sum).

    :param classifier: The classifier.
    :return: Call references in execution order.
    :raises ValueError: If the model calls no ReLU/ELU/LeakyReLU module.
    """
    trace = classifier.trace(training=False)
    refs = [call.ref for call in trace.calls if call.leaf and isinstance(call.module, AUTHORS_ACTIVATION_TYPES)]
    if not refs:
        raise ValueError("layers='activations': the model calls no ReLU, ELU or LeakyReLU module.")
    return refs


@dataclass
class LSAResult:
    """
    The relative errors of one LSA run: ``errors[p]`` is an ``(M, L)`` array, the relative error
    :math:`CM(\\phi_l(x_m), \\phi_l(\\hat x_m))` of sample ``m`` at layer ``l`` under perturbation ``p``.

    Statistics are per perturbation (``perturbation=None``: the first one, e.g. the attack):

    * :meth:`layer_mean` / :meth:`layer_std`: mean and standard deviation over the samples, per layer;
    * :meth:`mu` / :meth:`sigma`: mean and (population) standard deviation over all samples x layers (eq. 12);
    * :meth:`most_vulnerable`: Algorithm 1, the layers whose mean exceeds :math:`\\mu + \\eta\\sigma`, sorted by
      decreasing mean relative error.

    With ``reduction="batch"`` in :meth:`LayerSustainabilityAnalysis.run` a row is one batch (one Frobenius ratio
    over the whole batch) instead of one sample; the statistics are then over batches.

    :param layers: The layer names, one per column.
    :param errors: Perturbation name -> ``(M, L)`` array of relative errors (M >= 1 samples, or batches).
    """

    layers: list[str]
    errors: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        if not self.layers:
            raise ValueError("An LSAResult needs at least one layer.")
        if not self.errors:
            raise ValueError("An LSAResult needs at least one perturbation.")
        checked = {}
        for name, values in self.errors.items():
            array = np.asarray(values, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != len(self.layers) or array.shape[0] == 0:
                raise ValueError(
                    f"errors[{name!r}] must have shape (M >= 1, {len(self.layers)} layers), got {array.shape}."
                )
            checked[str(name)] = array
        self.errors = checked

    @property
    def perturbations(self) -> list[str]:
        """The perturbation names, in order."""
        return list(self.errors)

    def _get(self, perturbation: str | None) -> np.ndarray:
        if perturbation is None:
            return next(iter(self.errors.values()))
        if perturbation not in self.errors:
            raise ValueError(f"Unknown perturbation {perturbation!r}; this result has {self.perturbations}.")
        return self.errors[perturbation]

    def layer_mean(self, perturbation: str | None = None) -> np.ndarray:
        """
        Mean relative error of each layer over the samples, shape ``(L,)``.

        :param perturbation: The perturbation's name (default: the first).
        """
        return self._get(perturbation).mean(axis=0)

    def layer_std(self, perturbation: str | None = None) -> np.ndarray:
        """
        Standard deviation (population) of each layer's relative error over the samples, shape ``(L,)``.

        :param perturbation: The perturbation's name (default: the first).
        """
        return self._get(perturbation).std(axis=0)

    def mu(self, perturbation: str | None = None) -> float:
        """
        :math:`\\mu` of eq. 12: the mean over all M samples x L layers.

        :param perturbation: The perturbation's name (default: the first).
        """
        return float(self._get(perturbation).mean())

    def sigma(self, perturbation: str | None = None) -> float:
        """
        :math:`\\sigma` of eq. 12: the population standard deviation over all M samples x L layers.

        :param perturbation: The perturbation's name (default: the first).
        """
        return float(self._get(perturbation).std())

    def most_vulnerable(self, eta: float = DEFAULT_ETA, perturbation: str | None = None) -> list[str]:
        """
        Algorithm 1 of paper 004: the layers with :math:`\\overline{CM}_l - \\mu > \\eta\\,\\sigma`.

        :param eta: The cut-off :math:`\\eta` (unpublished in the paper, which tunes it per network; any real).
        :param perturbation: Which perturbation's errors (default: the first).
        :return: Layer names sorted by decreasing mean relative error (may be empty).
        """
        eta = check_range("eta", eta, -math.inf, math.inf, low_open=True, high_open=True)
        means = self.layer_mean(perturbation)
        threshold = self.mu(perturbation) + eta * self.sigma(perturbation)
        chosen = [i for i in np.argsort(-means, kind="stable") if means[i] > threshold]
        return [self.layers[i] for i in chosen]

    def to_dict(self, eta: float | None = None, samples: bool = True) -> dict[str, Any]:
        """
        A JSON-serialisable summary.

        :param eta: Also record the most vulnerable layers for this cut-off.
        :param samples: Include the per-sample errors (needed by :meth:`from_dict`).
        :return: ``{"layers", "perturbations": {name: {"mean", "std", "mu", "sigma"[, "most_vulnerable"]
                 [, "errors"]}}}``.
        """
        summary: dict[str, Any] = {"layers": list(self.layers), "perturbations": {}}
        if eta is not None:
            summary["eta"] = float(eta)
        for name in self.perturbations:
            entry: dict[str, Any] = {
                "mean": self.layer_mean(name).tolist(),
                "std": self.layer_std(name).tolist(),
                "mu": self.mu(name),
                "sigma": self.sigma(name),
                "nb_samples": int(self.errors[name].shape[0]),
            }
            if eta is not None:
                entry["most_vulnerable"] = self.most_vulnerable(eta, name)
            if samples:
                entry["errors"] = self.errors[name].tolist()
            summary["perturbations"][name] = entry
        return summary

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LSAResult:
        """
        Rebuild a result written by :meth:`to_dict` with ``samples=True``.

        :param data: The dict.
        :return: The result.
        """
        try:
            errors = {name: np.asarray(entry["errors"]) for name, entry in data["perturbations"].items()}
        except KeyError as err:
            raise ValueError(f"Not an LSAResult dict with per-sample errors (missing {err}).") from None
        return cls(layers=list(data["layers"]), errors=errors)

    def plot(self, path: str | os.PathLike, title: str | None = None, eta: float | None = None) -> str:
        """
        Draw the paper's Fig. 2/4: the mean relative error per layer, one line per perturbation (shaded: +- one
        standard deviation over the samples), to a PNG file. Uses matplotlib's Agg canvas (no display, no pyplot
        state).

        :param path: Output file (PNG).
        :param title: Figure title.
        :param eta: Also draw the cut-off :math:`\\mu + \\eta\\sigma` of the first perturbation (dashed), the one
                    :meth:`most_vulnerable` uses by default.
        :return: The path written, as a string.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(max(6.0, 0.55 * len(self.layers) + 3.0), 4.2))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        x = np.arange(len(self.layers))
        for index, name in enumerate(self.perturbations):
            mean, std = self.layer_mean(name), self.layer_std(name)
            (line,) = axes.plot(x, mean, "-o", label=name, zorder=3)
            axes.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.12, linewidth=0)
            if eta is not None and index == 0:
                axes.axhline(self.mu(name) + eta * self.sigma(name), color=line.get_color(), linestyle="--",
                             linewidth=0.8, label=f"{name}: mu + {eta:g} sigma")
        axes.set_xticks(x)
        axes.set_xticklabels([f"{i}\n{name}" for i, name in enumerate(self.layers)], fontsize=7,
                             rotation=30 if len(self.layers) > 6 else 0)
        axes.set_xlabel("learnable layer")
        axes.set_ylabel("relative error  |phi(x) - phi(x_hat)|_F / |phi(x)|_F")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.set_title(title or "Layer sustainability analysis")
        figure.tight_layout()
        return os.fspath(save_figure(figure, path, dpi=120))


def _named_sources(kind: str, spec: Any, classifier: LatentClassifier) -> list[tuple[str, PerturbationSource]]:
    """Normalise the `attack` / `noise` arguments of :meth:`LayerSustainabilityAnalysis.run` to named sources."""
    if spec is None:
        return []
    items: list[tuple[str | None, Any]]
    if isinstance(spec, Mapping):
        items = [(str(name), value) for name, value in spec.items()]
    elif isinstance(spec, (str, PerturbationSource)) or not isinstance(spec, Sequence):
        items = [(None, spec)]
    else:
        items = [(None, value) for value in spec]
    if not items:
        raise ValueError(f"`{kind}` is empty.")
    named = []
    for name, value in items:
        source: PerturbationSource
        if isinstance(value, str):
            if kind != "noise":
                raise ValueError(f"`{kind}` entries must be ART attacks or perturbation sources, got {value!r}.")
            noise = NoiseSource(value, clip_values=classifier.clip_values)
            source, label = noise, name or noise.kind
        else:
            source = as_perturbation_source(value, argument=kind)
            label = name or _source_label(value)
        named.append((label, source))
    return named


def _source_label(value: Any) -> str:
    if isinstance(value, NoiseSource):
        return value.kind
    if isinstance(value, GaussianNoiseSource):
        return f"gaussian(sigma={value.sigma:g})"
    eps = getattr(value, "eps", None)
    eps_text = f"(eps={float(eps):.4g})" if isinstance(eps, (int, float, np.floating)) else ""
    return f"{type(value).__name__}{eps_text}"


class LayerSustainabilityAnalysis:
    """
    Layer Sustainability Analysis (paper 004, Algorithms 1 and 2): feed clean inputs and their perturbed versions
    (an ART attack or statistical noise) through the trained model and measure, per sample and per layer, the
    relative error :math:`CM(\\phi_l(x), \\phi_l(\\hat x)) = \\|\\phi_l(x) - \\phi_l(\\hat x)\\|_F /
    \\|\\phi_l(x)\\|_F` (:func:`art_latent.regularizers.relative_error.relative_error`).

    The model runs in eval mode (its modes are restored), one forward pass per batch for the clean inputs and all
    their perturbed versions together, without parameter gradients; hooks are removed on exit.

    | Paper link: https://arxiv.org/abs/2202.02626
    """

    def __init__(
        self,
        classifier: LatentClassifier | PyTorchClassifier,
        layers: LayerSpec = "learnable",
        include_logits: bool = False,
    ) -> None:
        """
        :param classifier: The trained classifier (a plain ART ``PyTorchClassifier`` is wrapped, sharing its model).
        :param layers: ``"learnable"`` (default: every conv/linear layer at its activation output, see
                       :func:`learnable_layers`), ``"activations"`` (every ReLU/ELU/LeakyReLU module output, the
                       authors' code, see :func:`activation_layers`) or names / patterns / types as in
                       :class:`~art_latent.LatentClassifier`.
        :param include_logits: With ``"learnable"``, also measure the logits layer.
        """
        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(
                f"`classifier` must be an art_latent LatentClassifier or ART PyTorchClassifier, got "
                f"{type(classifier).__name__}."
            )
        if not isinstance(classifier, LatentClassifier):
            classifier = LatentClassifier.from_classifier(classifier)
        self.classifier: LatentClassifier = classifier
        if isinstance(layers, str) and layers == "learnable":
            self.layers = learnable_layers(classifier, include_logits=bool(include_logits))
        elif isinstance(layers, str) and layers == "activations":
            if include_logits:
                raise ValueError("`include_logits` applies to layers='learnable' only; list the logits layer instead.")
            self.layers = activation_layers(classifier)
        else:
            if include_logits:
                raise ValueError("`include_logits` applies to layers='learnable' only; list the logits layer instead.")
            self.layers = classifier.require_latent_layers(layers)

    def run(
        self,
        x: np.ndarray | torch.Tensor,
        x_perturbed: np.ndarray | torch.Tensor | None = None,
        attack: Any = None,
        noise: Any = None,
        y: np.ndarray | torch.Tensor | None = None,
        batch_size: int = 256,
        verbose: bool = False,
        reduction: str = "sample",
    ) -> LSAResult:
        """
        Measure the per-sample (or per-batch), per-layer relative errors.

        :param x: Clean inputs ``(M, *input_shape)`` within the classifier's ``clip_values``.
        :param x_perturbed: Ready-made perturbed versions of `x` (named ``"x_perturbed"``).
        :param attack: An ART evasion attack or a :class:`~art_latent.perturbations.PerturbationSource`, a list of
                       them, or a dict name -> attack. ART's FGSM/BIM/PGD run on the on-device torch path.
        :param noise: ``"gaussian"``, ``"salt"``, ``"pepper"``, ``"s&p"``, ``"speckle"`` (a :class:`NoiseSource`
                      with skimage's defaults), a source, a list of these, or a dict name -> source.
        :param y: Labels for the attacks (indices or one-hot); default: the classifier's predictions (as ART's
                  attacks do without labels).
        :param batch_size: Samples per forward pass (each pass holds the batch and all its perturbed versions).
        :param verbose: Show a progress bar.
        :param reduction: ``"sample"`` (default: one relative error per sample, eq. 11-12) or ``"batch"`` (one
                          Frobenius ratio per batch of `batch_size` samples, the norms running over the batch too:
                          what the authors' code computes; the result then has one row per batch).
        :return: The :class:`LSAResult`; perturbations in the order x_perturbed, attacks, noises.
        :raises ValueError: Without any perturbation, or on invalid inputs.
        """
        clf = self.classifier
        batch_size = check_int("batch_size", batch_size)
        reduction = check_choice("reduction", reduction, LSA_REDUCTIONS)
        per_row = "none" if reduction == "sample" else "batch"
        labels = np.zeros(len(x), dtype=np.int64) if y is None else y
        x_np, y_np = check_data(x, labels, clf.input_shape, clf.nb_classes, clf.clip_values)
        sources = _named_sources("attack", attack, clf) + _named_sources("noise", noise, clf)
        x_pert_np = None
        if x_perturbed is not None:
            x_pert_np, _ = check_data(x_perturbed, labels, clf.input_shape, clf.nb_classes, clf.clip_values,
                                      name="x_perturbed")
            if len(x_pert_np) != len(x_np):
                raise ValueError(f"`x_perturbed` has {len(x_pert_np)} samples, `x` has {len(x_np)}.")
        names = (["x_perturbed"] if x_pert_np is not None else []) + [name for name, _ in sources]
        if not names:
            raise ValueError("Give at least one perturbation: `x_perturbed`, `attack` or `noise`.")
        names = _unique(names)

        device = clf.device
        model = clf.model
        per_name: list[list[torch.Tensor]] = [[] for _ in names]
        with preserve_mode(model):
            model.eval()
            for begin in tqdm(range(0, len(x_np), batch_size), desc="LSA", disable=not verbose):
                xb = torch.from_numpy(x_np[begin : begin + batch_size]).to(device)
                if y is None:
                    with torch.no_grad():
                        xb_pre = clf._apply_preprocessing(xb, y=None, fit=False, no_grad=True)[0]
                        yb = clf.model_logits(xb_pre).argmax(1)
                else:
                    yb = torch.from_numpy(y_np[begin : begin + batch_size]).to(device)
                perturbed = []
                if x_pert_np is not None:
                    perturbed.append(torch.from_numpy(x_pert_np[begin : begin + batch_size]).to(device))
                for _, source in sources:
                    perturbed.append(source.generate(xb, yb).to(xb.dtype))
                with torch.no_grad():
                    _, acts = clf.forward_with_latents(torch.cat([xb, *perturbed]), self.layers)
                n = len(xb)
                for index in range(len(names)):
                    rows = slice(n * (index + 1), n * (index + 2))
                    values = [relative_error(a[:n], a[rows], reduction=per_row) for a in acts.values()]
                    per_name[index].append(torch.stack(values, dim=-1).reshape(-1, len(values)))
        errors = {name: torch.cat(chunks).double().cpu().numpy() for name, chunks in zip(names, per_name, strict=True)}
        return LSAResult(layers=list(self.layers), errors=errors)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return result


def rg_score(accuracies: Sequence[float], percent: bool = False) -> float:
    """
    The robustness-and-generalization (R&G) score of paper 004: the sum of the accuracies, in percent, over the
    list of attack budgets, the clean accuracy (budget 0) included. E.g. ``rg_score(accuracy_vs_eps(...))``.

    :param accuracies: One accuracy per budget, as fractions in [0, 1] (what
                       :func:`art_latent.analysis.metrics.accuracy_vs_eps` returns) or, with `percent`, in [0, 100].
    :param percent: The accuracies are already percentages.
    :return: The score (at most ``100 * len(accuracies)``).
    """
    values = list(accuracies)
    if not values:
        raise ValueError("`accuracies` is empty: give one accuracy per budget, budget 0 included.")
    top = 100.0 if percent else 1.0
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not (
            0.0 <= value <= top
        ):
            hint = "" if percent else " (percentages need percent=True)"
            raise ValueError(f"`accuracies` must be numbers in [0, {top:g}]{hint}, got {value!r}.")
    return float(sum(values) * (1.0 if percent else 100.0))
