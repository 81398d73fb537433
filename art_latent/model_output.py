"""
Where the logits are in a model's output: the checks of ``output_key`` / ``logits_fn``, picking the logits out of a
tuple, dict or HF ``ModelOutput`` (:func:`select_logits`), and the ART ``ModelWrapper`` subclass that does it on
every ART code path (:func:`logits_wrapper_class`). :class:`~art_latent.estimator.LatentClassifier` builds on them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["OutputKey", "check_output", "logits_wrapper_class", "select_logits"]

#: What picks the logits out of a model output that is not a tensor: a key (dict, HF ``ModelOutput``) or an index.
OutputKey = str | int


def check_output(
    output_key: OutputKey | None, logits_fn: Callable[[Any], torch.Tensor] | None
) -> tuple[OutputKey | None, Callable[[Any], torch.Tensor] | None]:
    """
    Check the two ways of saying where the logits are.

    :param output_key: A dict / ``ModelOutput`` key or a tuple index, or ``None``.
    :param logits_fn: A function from the model output to the logits, or ``None``.
    :return: ``(output_key, logits_fn)``, unchanged.
    :raises TypeError: If `output_key` is not a str or int, or `logits_fn` is not callable.
    :raises ValueError: If both are given.
    """
    if output_key is not None and (isinstance(output_key, bool) or not isinstance(output_key, (str, int))):
        raise TypeError(f"`output_key` must be a str (dict / ModelOutput key) or an int (tuple index), got "
                        f"{output_key!r}.")
    if logits_fn is not None and not callable(logits_fn):
        raise TypeError(f"`logits_fn` must be callable (model output -> logits tensor), got {logits_fn!r}.")
    if output_key is not None and logits_fn is not None:
        raise ValueError("Give either `output_key` or `logits_fn`, not both.")
    return output_key, logits_fn


def select_logits(
    output: Any,
    output_key: OutputKey | None,
    logits_fn: Callable[[Any], torch.Tensor] | None,
    nb_classes: int,
) -> torch.Tensor:
    """
    The logits in a model output, picked with `logits_fn` or `output_key` (neither: the output is the logits).

    :param output: What the model's ``forward`` returned.
    :param output_key: A dict / ``ModelOutput`` key or a tuple index.
    :param logits_fn: A function from the output to the logits (used instead of `output_key`).
    :param nb_classes: The classifier's number of classes, checked against the logits' last dimension (one logit
                       for two classes is ART's binary convention).
    :return: The logits tensor.
    :raises TypeError: If the output is not a tensor and neither `output_key` nor `logits_fn` says where the logits
                       are, or they do not lead to a tensor.
    :raises ValueError: If the number of logits is not `nb_classes`.
    """
    if logits_fn is not None:
        output = logits_fn(output)
    elif output_key is not None:
        try:
            output = output[output_key]
        except (KeyError, IndexError, TypeError) as error:
            available = list(output.keys()) if isinstance(output, Mapping) else None
            raise TypeError(
                f"`output_key`={output_key!r} does not pick the logits out of the model output "
                f"({type(output).__name__}{f' with keys {available}' if available else ''}): {error}"
            ) from None
    if not isinstance(output, torch.Tensor):
        keys = f" with keys {list(output.keys())}" if isinstance(output, Mapping) else ""
        hint = ("pass `output_key`='logits' (a dict / ModelOutput key), `output_key`=0 (a tuple index) or "
                "`logits_fn`=... to LatentClassifier")
        if logits_fn is not None or output_key is not None:
            raise TypeError(f"The logits picked from the model output are a {type(output).__name__}, not a tensor.")
        raise TypeError(f"The model's forward returned a {type(output).__name__}{keys}, not the logits tensor; "
                        f"{hint}.")
    # Shapes only (no host synchronisation). One output for nb_classes=2 is ART's binary convention (sigmoid).
    if output.ndim >= 2 and output.shape[-1] != nb_classes and not (output.shape[-1] == 1 and nb_classes == 2):
        raise ValueError(
            f"The model returns {output.shape[-1]} logits per input (output shape {tuple(output.shape)}), but the "
            f"classifier has `nb_classes`={nb_classes}: set `nb_classes` to the model's number of outputs "
            "(or fix its last layer)."
        )
    return output


def logits_wrapper_class(base: type[torch.nn.Module], select: Callable[[Any], torch.Tensor]) -> type:
    """
    A subclass of ART's ``ModelWrapper`` class `base` whose ``forward`` picks the logits: ART's wrapper returns
    ``[output]`` and ART reads ``[-1]``, so every ART code path sees a tensor (and a clear error when a tuple or
    ``ModelOutput`` arrives without ``output_key``).

    :param base: The class of the wrapper ART made.
    :param select: Model output -> logits.
    :return: The subclass (same name as `base`).
    """

    def forward(wrapped: torch.nn.Module, x: torch.Tensor) -> list[Any]:
        result = base.forward(wrapped, x)
        result[-1] = select(result[-1])
        return result

    return type(base.__name__, (base,), {"forward": forward})
