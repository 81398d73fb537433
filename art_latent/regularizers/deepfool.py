"""
Deep Defense (paper 003): a batched multi-class L2 DeepFool that can stay inside the autograd graph, and the
perturbation-norm regularizer built on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)

_TINY = 1e-12
_MAX_EXPONENT = 50.0  # exp(50) ~ 5e21; float32 overflows at exp(88.7)


class DeepFoolResult(NamedTuple):
    """What :func:`deepfool` returns."""

    #: The perturbation ``(1 + overshoot) * sum_t r_t``, same shape as the input; in the autograd graph when
    #: ``create_graph=True``.
    perturbation: torch.Tensor
    #: ``(n,)`` bool: the sample's goal was reached (untargeted: the prediction left the clean prediction; a
    #: misclassified sample with labels: the prediction became the true label).
    fooled: torch.Tensor
    #: ``(n,)`` int64: the number of DeepFool steps applied to the sample.
    iterations: torch.Tensor


def deepfool(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: int | None = None,
    create_graph: bool = False,
    logits: torch.Tensor | None = None,
    stop_early: bool = True,
    compact: bool = False,
) -> DeepFoolResult:
    r"""
    Batched multi-class L2 DeepFool (Moosavi-Dezfooli et al. 2016) as Deep Defense uses it (paper 003, eq. 1-2).

    With :math:`x_t = x + \sum_{s<t} r_s` and :math:`a` the class to leave, each step linearizes the logit
    differences :math:`f_k = z_k(x_t) - z_a(x_t)` and moves to the closest linearized boundary:

    .. math::
        \hat k = \arg\min_{k} \frac{|f_k|}{\|\nabla_x f_k\|_2}, \qquad
        r_t = \frac{|f_{\hat k}|}{\|\nabla_x f_{\hat k}\|_2^2}\,\nabla_x f_{\hat k}.

    A sample stops (its later steps are masked to zero) once :math:`x + (1 + \text{overshoot}) \sum_s r_s` reaches
    its goal; the result is :math:`(1 + \text{overshoot}) \sum_t r_t`, as in the authors' code (the overshoot is
    applied to the sum, the linearization points carry none).

    * ``labels=None``: every sample leaves its clean prediction :math:`a`; the candidates :math:`k` are the other
      classes (the `candidates` highest clean logits when given).
    * with ``labels``: correctly classified samples do the same; a misclassified sample is pushed towards its
      true label :math:`y` (:math:`k = y`, :math:`a` = its current prediction at :math:`x_t`) and stops once it is
      classified as :math:`y` (Deep Defense, section 3.4 and the authors' ``forward_wrong``).

    Batched: per step one forward with the graph, one backward per candidate column (``logits.gather(...).sum()``
    gives every sample's own gradient because the samples are independent: `forward` must not couple them, e.g.
    BatchNorm in eval mode) and, with ``create_graph``, one more backward with ``create_graph=True`` for the chosen
    class only, so the double-backward graph holds one gradient per step. No Python loop runs over samples.

    :param forward: Maps a batch in input space to logits ``(n, nb_classes)``; must treat samples independently.
    :param x: Inputs ``(n, ...)``.
    :param labels: True labels (``int64 (n,)``) or ``None`` for the plain untargeted attack.
    :param max_iter: Maximum number of steps (Deep Defense trains with 5, evaluates rho_2 with 50).
    :param overshoot: The overshoot (0.02 in DeepFool and Deep Defense).
    :param candidates: Consider only this many classes (highest clean logits other than the prediction) for
                       correctly classified samples; ``None`` (default): all classes, as the authors do.
    :param create_graph: Keep the perturbation in the autograd graph (w.r.t. the parameters and `x`) so a loss of
                         it can be back-propagated, as Deep Defense needs.
    :param logits: ``forward(x)`` when the caller already computed it (``x`` must then require gradients and be
                   the tensor the logits were computed from), so the first forward is shared with, e.g., the
                   cross-entropy.
    :param stop_early: Leave the loop once every sample has stopped (one host synchronisation per step; the result
                       is the same because stopped samples receive zero steps).
    :param compact: With `stop_early`, compute each step on the samples still active only instead of masking the
                    stopped ones (the host read of `stop_early` gives their rows). Same result up to float rounding
                    when `forward` treats samples independently (BatchNorm in eval mode, no dropout); a forward that
                    couples the batch (train-mode BatchNorm) sees other batches and gives other results.
    :return: A :class:`DeepFoolResult`.
    """
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"`max_iter` must be an integer >= 1, got {max_iter!r}.")
    if not overshoot >= 0:
        raise ValueError(f"`overshoot` must be >= 0, got {overshoot!r}.")
    if logits is None:
        x0 = x if x.requires_grad else x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = forward(x0)
    else:
        if not x.requires_grad:
            raise ValueError("With precomputed `logits`, `x` must require gradients (the logits' input).")
        x0 = x
    if logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
        raise ValueError(
            f"`forward` must return logits of shape ({x0.shape[0]}, nb_classes), got {tuple(logits.shape)}."
        )
    n, nb_classes = logits.shape
    if nb_classes < 2:
        raise ValueError("DeepFool needs at least two classes.")
    nb_cand = nb_classes - 1 if candidates is None else int(candidates)
    if not 1 <= nb_cand <= nb_classes - 1:
        raise ValueError(f"`candidates` must be in [1, {nb_classes - 1}] or None, got {candidates!r}.")

    device = logits.device
    clean_pred = logits.detach().argmax(1)
    if labels is None:
        wrong = torch.zeros(n, dtype=torch.bool, device=device)
        targets = clean_pred
    else:
        targets = labels.to(device).long().reshape(-1)
        if targets.shape[0] != n:
            raise ValueError(f"`labels` has {targets.shape[0]} entries for {n} samples.")
        wrong = clean_pred != targets
    # Candidate columns: the highest clean logits except the prediction; a misclassified sample has one, its label.
    scores = logits.detach().float().scatter(1, clean_pred[:, None], float("-inf"))
    cand = scores.topk(nb_cand, dim=1).indices
    cand[:, 0] = torch.where(wrong, targets, cand[:, 0])
    valid = torch.ones_like(cand, dtype=torch.bool)
    valid[:, 1:] = ~wrong[:, None]

    view = (n,) + (1,) * (x0.ndim - 1)
    total = torch.zeros_like(x0)
    active = torch.ones(n, dtype=torch.bool, device=device)
    fooled = torch.zeros(n, dtype=torch.bool, device=device)
    iterations = torch.zeros(n, dtype=torch.long, device=device)
    x_t, logits_t = x0, logits
    rows: torch.Tensor | None = None  # with stop_early: the samples still active (all of them at the first step)
    for step in range(max_iter):
        def pick(t: torch.Tensor, rows: torch.Tensor | None = rows) -> torch.Tensor:
            return t if rows is None else t.index_select(0, rows)

        m = logits_t.shape[0]
        with torch.enable_grad():
            wrong_t, clean_t, cand_t = pick(wrong), pick(clean_pred), pick(cand)
            reference = torch.where(wrong_t, logits_t.detach().argmax(1), clean_t)
            f = logits_t.gather(1, cand_t) - logits_t.gather(1, reference[:, None])  # (m, nb_cand)
            # Gradients without a graph, to choose the class (and, without create_graph, to step). With one candidate
            # and create_graph there is nothing to choose: the graph-building backward below is the only one.
            select = nb_cand > 1 or not create_graph
            grads = [
                torch.autograd.grad(f[:, j].sum(), x_t, retain_graph=True)[0] for j in range(nb_cand if select else 0)
            ]
            if grads:
                norms = torch.stack([g.flatten(1).float().square().sum(1) for g in grads], 1).sqrt()
                distance = f.detach().float().abs() / (norms + _TINY)
                chosen = distance.masked_fill(~pick(valid), float("inf")).argmin(1)
            else:
                chosen = torch.zeros(m, dtype=torch.long, device=device)
            f_chosen = f.gather(1, chosen[:, None]).squeeze(1)
            if create_graph:
                w = torch.autograd.grad(f_chosen.sum(), x_t, create_graph=True)[0]
            else:
                w = torch.stack(grads, 1)[torch.arange(m, device=device), chosen]
                f_chosen = f_chosen.detach()
            scale = f_chosen.abs() / (w.flatten(1).square().sum(1) + _TINY)
            r = scale.to(w.dtype).reshape((m,) + view[1:]) * w
        if rows is None:
            total = total + torch.where(active.reshape(view), r, torch.zeros_like(r))
            iterations = iterations + active.long()
        else:  # only active samples were stepped
            total = total.index_add(0, rows, r)
            iterations = iterations.index_add(0, rows, torch.ones_like(rows))
        with torch.no_grad():
            prediction = forward(pick(x0.detach() + (1.0 + overshoot) * total.detach())).argmax(1)
        reached = torch.where(wrong_t, prediction == pick(targets), prediction != clean_t)
        if rows is not None:
            reached = torch.zeros_like(active).index_copy(0, rows, reached)
        fooled = fooled | (active & reached)
        active = active & ~reached  # not in place: the graph holds the previous mask
        if step == max_iter - 1:
            break
        if stop_early and compact:
            rows = active.nonzero().squeeze(1)  # the host read: stopped samples are not computed any more
            if rows.numel() == 0:
                break
        elif stop_early and not bool(active.any()):
            break
        with torch.enable_grad():
            x_next = x0 + total if create_graph else (x0.detach() + total)
            x_t = pick(x_next, rows)
            if not create_graph:
                x_t = x_t.detach().requires_grad_(True)
            logits_t = forward(x_t)
    return DeepFoolResult((1.0 + overshoot) * total, fooled, iterations)


def perturbation_ratio(perturbation: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""
    Per-sample :math:`\|r_i\|_2 / \|x_i\|_2`, the quantity :math:`\rho_2` averages; :math:`\|x_i\|` is a constant.

    :param perturbation: Perturbations ``(n, ...)`` (differentiable).
    :param x: The inputs ``(n, ...)``; detached.
    :return: ``(n,)`` ratios, in float32 at least.
    """
    dtype = torch.promote_types(perturbation.dtype, torch.float32)
    r_norm = (perturbation.flatten(1).to(dtype).square().sum(1) + _TINY).sqrt()  # finite gradient at r = 0
    x_norm = x.detach().flatten(1).to(dtype).norm(dim=1).clamp_min(_TINY)
    return r_norm / x_norm


def deep_defense_regularizer(
    ratio: torch.Tensor, correct: torch.Tensor, c: float = 25.0, d: float = 5.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""
    Deep Defense's regularizer (paper 003, eq. 6 with :math:`R = \exp`):

    .. math::
        R_i = \begin{cases} \exp(-c\,\|r_i\|/\|x_i\|) & x_i \text{ classified correctly} \\
                            \exp(d\,\|r_i\|/\|x_i\|) & \text{otherwise} \end{cases}

    Minimizing it enlarges the DeepFool distance of correctly classified samples (most strongly where it is small)
    and shrinks the distance of misclassified samples to their true class.

    :param ratio: ``(n,)`` :math:`\|r_i\|/\|x_i\|` (:func:`perturbation_ratio`).
    :param correct: ``(n,)`` bool, the clean prediction equals the label.
    :param c: Scale for correctly classified samples (> 0; 25 in the paper for MNIST/CIFAR-10).
    :param d: Scale for misclassified samples (> 0; 5 in the paper).
    :param reduction: ``"mean"`` (the paper: averaged over the batch), ``"sum"`` or ``"none"``.
    :return: The regularizer (a scalar, or ``(n,)`` with ``"none"``); exponents above 50 (far beyond the paper's
             regime) continue linearly so that value and gradient stay finite.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if ratio.shape != correct.shape:
        raise ValueError(f"`ratio` and `correct` differ in shape: {tuple(ratio.shape)} vs {tuple(correct.shape)}.")
    # One exp of the selected exponent: exp of the unselected branch could overflow and turn the gradient into NaN.
    # Past _MAX_EXPONENT the exponential continues linearly (same value and slope there), so a sample misclassified
    # far beyond any realistic ratio keeps a finite value and gradient instead of overflowing float32.
    exponent = torch.where(correct, -c * ratio, d * ratio)
    values = torch.exp(exponent.clamp(max=_MAX_EXPONENT)) * (1.0 + (exponent - _MAX_EXPONENT).clamp(min=0.0))
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values
