"""Small torch helpers shared by the estimator, the perturbation sources and the trainers."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def preserve_mode(model: torch.nn.Module) -> Iterator[None]:
    """
    Restore the ``training`` flag of every sub-module of `model` on exit, also on exceptions.

    ART's estimators switch the whole model to eval and never back; users may also run some modules (for example
    frozen BatchNorm layers) in a mode that differs from the rest, so each module's flag is saved individually.

    :param model: The module whose modes are saved and restored.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def preserve_param_grads(model: torch.nn.Module) -> Iterator[None]:
    """
    Restore the ``.grad`` of every parameter of `model` on exit, also on exceptions.

    ART's ``loss_gradient`` zeroes and overwrites parameter gradients; a trainer that generates adversarial examples
    in the middle of gradient accumulation must not lose what it accumulated.

    :param model: The module whose parameter gradients are saved and restored.
    """
    saved = [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        for param, grad in saved:
            param.grad = grad


def labels_to_indices(y: torch.Tensor) -> torch.Tensor:
    """
    Convert one-hot (or probability) labels of shape ``(n, k)`` to class indices; pass indices through.

    :param y: Labels as indices ``(n,)`` or one-hot ``(n, k)``.
    :return: ``int64`` class indices of shape ``(n,)``.
    """
    if y.ndim == 2:
        return y.argmax(dim=1)
    return y.long()


@contextlib.contextmanager
def preserve_requires_grad(model: torch.nn.Module) -> Iterator[None]:
    """
    Restore the ``requires_grad`` flag of every parameter of `model` on exit, also on exceptions (methods freeze
    parts of the model during training).

    :param model: The module whose parameter flags are saved and restored.
    """
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for param, flag in saved:
            param.requires_grad_(flag)


def user_stacklevel() -> int:
    """
    The ``stacklevel`` for :func:`warnings.warn` that makes the warning point at the first caller outside art_latent
    (the user's ``fit`` call), however many of the library's frames lie between: call it as the argument of
    ``warnings.warn`` in the function that warns.
    """
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "art_latent":
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level
