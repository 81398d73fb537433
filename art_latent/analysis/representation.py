"""
Representation metrics of paper 001 (Adversarial Feature Desensitization): the sensitivity of the embedding to
adversarial perturbations, its dimensionality, and the normalized area under a robust-accuracy curve.

The embedding :math:`E(x)` is, by default, the input of the network's final linear layer (the representation the
AFD paper regularizes); any module of the model can be named instead (its output is used).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from art_latent.capture import split_ref
from art_latent.estimator import LatentClassifier
from art_latent.utils import preserve_mode

logger = logging.getLogger(__name__)

_TINY = 1e-12


class EmbeddingSite(NamedTuple):
    """Where the embedding is read: the output of module `name`, or its input when `use_input`."""

    name: str
    use_input: bool


def final_linear_layer(classifier: LatentClassifier) -> str:
    """
    The qualified name of the last ``torch.nn.Linear`` module that runs in a forward pass (one traced pass in eval
    mode; modes and hooks are restored).

    :param classifier: The classifier.
    :return: The module name.
    :raises ValueError: If no ``torch.nn.Linear`` runs.
    """
    linears = [call.ref for call in classifier.trace(training=False).calls if isinstance(call.module, torch.nn.Linear)]
    if not linears:
        raise ValueError(
            "The model has no torch.nn.Linear layer whose input could be the embedding; name the embedding layer "
            "explicitly (its output is used)."
        )
    return linears[-1]


def resolve_embedding(
    classifier: LatentClassifier, layer: str | int | None = None, argument: str = "layer"
) -> EmbeddingSite:
    """
    Resolve an embedding specification.

    :param classifier: The classifier.
    :param layer: ``None`` (default): the input of the final linear layer (the AFD paper's representation);
                  otherwise a module name (or an index into ``latent_layers``) whose **output** is the embedding.
    :param argument: The name of the argument `layer` came from, for error messages.
    :return: The :class:`EmbeddingSite`.
    :raises TypeError: If `classifier` is not a :class:`~art_latent.LatentClassifier`.
    :raises ValueError: If `layer` names no module, or names several (a pattern).
    """
    if not isinstance(classifier, LatentClassifier):
        raise TypeError(
            f"`classifier` must be an art_latent LatentClassifier, got {type(classifier).__name__}; wrap an ART "
            "PyTorchClassifier with LatentClassifier.from_classifier(clf, layers=...)."
        )
    if layer is None:
        return EmbeddingSite(final_linear_layer(classifier), True)
    names = classifier.layer_refs(layer, argument=argument)
    if len(names) != 1:
        raise ValueError(f"`{argument}` must name one layer (the embedding); {layer!r} matches {names}.")
    return EmbeddingSite(names[0], False)


def forward_with_embedding(
    classifier: LatentClassifier, x: torch.Tensor, site: EmbeddingSite
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One forward pass (through ART's preprocessing, in the model's current mode) returning the logits and the
    embedding flattened to ``(n, features)``; differentiable. The hook lives only during the call.

    :param classifier: The classifier.
    :param x: Inputs on the classifier's device.
    :param site: Where to read the embedding (:func:`resolve_embedding`).
    :return: ``(logits, embedding)``.
    """
    if not site.use_input:
        logits, acts = classifier.forward_with_latents(x, [site.name])
        return logits, acts[site.name].flatten(1)
    module = dict(classifier.model.named_modules())[split_ref(site.name)[0]]
    store: dict[str, torch.Tensor] = {}

    def pre_hook(_module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        store["h"] = inputs[0]

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        x_pre, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        logits = classifier.model_logits(x_pre)
    finally:
        handle.remove()
    if "h" not in store:
        raise RuntimeError(f"Layer {site.name!r} did not run in the forward pass.")
    return logits, store["h"].flatten(1)


def embeddings(
    classifier: LatentClassifier, x: np.ndarray | torch.Tensor, layer: str | int | None = None, batch_size: int = 256
) -> np.ndarray:
    """
    The embeddings :math:`E(x)` of a data set, computed in eval mode without gradients (mode restored).

    :param classifier: The classifier.
    :param x: Inputs (numpy or tensor).
    :param layer: See :func:`resolve_embedding`.
    :param batch_size: Batch size.
    :return: ``(n, features)`` float array.
    """
    return _embeddings(classifier, x, resolve_embedding(classifier, layer), batch_size)


def _embeddings(
    classifier: LatentClassifier, x: np.ndarray | torch.Tensor, site: EmbeddingSite, batch_size: int
) -> np.ndarray:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    x_t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    outputs = []
    with preserve_mode(classifier.model), torch.no_grad():
        classifier.model.eval()
        for begin in range(0, len(x_t), batch_size):
            batch = x_t[begin : begin + batch_size].to(classifier.device, torch.float32)
            outputs.append(forward_with_embedding(classifier, batch, site)[1].float().cpu())
    return torch.cat(outputs).numpy() if outputs else np.empty((0, 0), dtype=np.float32)


def representation_sensitivity(
    classifier: LatentClassifier,
    x: np.ndarray | torch.Tensor,
    x_adv: np.ndarray | torch.Tensor,
    layer: str | int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    r"""
    Normalized representation sensitivity (paper 001, section 3.2 and Fig. 4):
    :math:`s_i = \|E(x_i) - E(x'_i)\|_2 / \|E(x_i)\|_2` for each sample and its perturbed version.

    :param classifier: The classifier.
    :param x: Clean inputs.
    :param x_adv: Perturbed inputs (e.g. PGD), same shape.
    :param layer: The embedding (see :func:`resolve_embedding`; default: the input of the final linear layer).
    :param batch_size: Batch size.
    :return: ``{"median", "mean", "std", "per_sample"}`` (the paper plots the median with the standard deviation).
    """
    if tuple(np.shape(x)) != tuple(np.shape(x_adv)):
        raise ValueError(f"`x` and `x_adv` differ in shape: {tuple(np.shape(x))} vs {tuple(np.shape(x_adv))}.")
    if len(x) == 0:
        raise ValueError("`x` is empty.")
    site = resolve_embedding(classifier, layer)
    clean = _embeddings(classifier, x, site, batch_size).astype(np.float64)
    perturbed = _embeddings(classifier, x_adv, site, batch_size).astype(np.float64)
    values = np.linalg.norm(clean - perturbed, axis=1) / np.maximum(np.linalg.norm(clean, axis=1), _TINY)
    return {
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "per_sample": values,
    }


def representation_dimensionality(
    classifier: LatentClassifier,
    x: np.ndarray | torch.Tensor,
    layer: str | int | None = None,
    variance: float = 0.99,
    atol: float = 0.0,
    batch_size: int = 256,
) -> dict[str, int]:
    """
    Dimensionality of the representation over a data set (paper 001, Table A5): the number of units that are
    non-zero for at least one sample, and the number of PCA components (``sklearn.decomposition.PCA``) that explain
    `variance` of the variance.

    :param classifier: The classifier.
    :param x: Inputs (the paper: the test set).
    :param layer: The embedding (see :func:`resolve_embedding`).
    :param variance: Fraction of the variance the PCA components must explain, in (0, 1] (0.99 in the paper).
    :param atol: A unit counts as non-zero when ``|E(x)| > atol`` for some sample.
    :param batch_size: Batch size.
    :return: ``{"units", "pca_dims", "total_units"}``.
    """
    from sklearn.decomposition import PCA

    if not 0.0 < variance <= 1.0:
        raise ValueError(f"`variance` must be in (0, 1], got {variance!r}.")
    if atol < 0:
        raise ValueError(f"`atol` must be >= 0, got {atol!r}.")
    if len(x) < 2:
        raise ValueError("`x` needs at least two samples for the PCA.")
    features = _embeddings(classifier, x, resolve_embedding(classifier, layer), batch_size).astype(np.float64)
    units = int((np.abs(features) > atol).any(axis=0).sum())
    if np.allclose(features.var(axis=0).sum(), 0.0):
        pca_dims = 0
    else:
        ratios = PCA(svd_solver="full").fit(features).explained_variance_ratio_
        # Smallest k whose cumulative ratio reaches `variance` (sklearn's float n_components rule, made explicit).
        pca_dims = min(int(np.searchsorted(np.cumsum(ratios), variance - 1e-12)) + 1, len(ratios))
    return {"units": units, "pca_dims": pca_dims, "total_units": int(features.shape[1])}


def robust_accuracy_auc(
    curve: Sequence[float] | Mapping[float, float], eps: Sequence[float] | None = None
) -> float:
    """
    Area under a robust-accuracy-versus-budget curve, normalized so that accuracy 1 at every budget gives 1
    (paper 001, Table 2): trapezoid rule (``scipy.integrate.trapezoid``) divided by the budget range.

    :param curve: Accuracies in [0, 1], one per budget, or a mapping budget -> accuracy.
    :param eps: The budgets (increasing) when `curve` is a sequence, e.g. ``[0, 0.1, 0.3, 0.35, 0.4, 0.45, 0.5]``.
    :return: The normalized AUC in [0, 1].
    """
    from scipy.integrate import trapezoid

    if isinstance(curve, Mapping):
        if eps is not None:
            raise ValueError("Give the budgets either as the keys of `curve` or as `eps`, not both.")
        items = sorted(curve.items())
        budgets = np.array([k for k, _ in items], dtype=np.float64)
        accuracies = np.array([v for _, v in items], dtype=np.float64)
    else:
        if eps is None:
            raise ValueError("`eps` (the budgets) is required when `curve` is a sequence of accuracies.")
        budgets = np.asarray(eps, dtype=np.float64)
        accuracies = np.asarray(curve, dtype=np.float64)
    if budgets.ndim != 1 or accuracies.shape != budgets.shape:
        raise ValueError(f"Need one accuracy per budget, got {accuracies.shape} accuracies for {budgets.shape}.")
    if len(budgets) < 2:
        raise ValueError("The curve needs at least two budgets.")
    if not np.all(np.isfinite(budgets)) or np.any(np.diff(budgets) <= 0):
        raise ValueError(f"The budgets must be finite and strictly increasing, got {budgets.tolist()}.")
    if not np.all((accuracies >= 0) & (accuracies <= 1)):
        raise ValueError(f"Accuracies must lie in [0, 1], got {accuracies.tolist()}.")
    return float(trapezoid(accuracies, budgets) / (budgets[-1] - budgets[0]))
