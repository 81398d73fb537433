"""
Checks that reject bad input with a clear message before any work is done.
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """
    Return `value` as an int if it is an integer in ``[minimum, maximum]``, else raise ``ValueError`` naming `name`.

    :param name: The argument's name, for the message.
    :param value: The value to check.
    :param minimum: The smallest accepted value.
    :param maximum: The largest accepted value (none by default).
    :return: ``int(value)``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum or (
            maximum is not None and int(value) > maximum):
        accepted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be an integer {accepted}, got {value!r}.")
    return int(value)


def check_range(
    name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> float:
    """
    Return `value` as a float if it lies in the interval, else raise ``ValueError`` naming `name` and the interval.

    :param name: The argument's name, for the message.
    :param value: The value to check.
    :param low: Lower bound.
    :param high: Upper bound (``float("inf")`` for none).
    :param low_open: Exclude `low`.
    :param high_open: Exclude `high`.
    :return: ``float(value)``.
    """
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"`{name}` must be a real number in {interval}, got {value!r}.")
    number = float(value)
    if not math.isfinite(number) and number != high:
        raise ValueError(f"`{name}` must be a real number in {interval}, got {value!r}.")
    ok_low = number > low if low_open else number >= low
    ok_high = number < high if high_open else number <= high
    if not (ok_low and ok_high):
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")
    return number


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """
    Raise ``ValueError`` naming `name` and the accepted values unless `value` is one of `choices`.

    :param name: The argument's name, for the message.
    :param value: The value to check.
    :param choices: The accepted values.
    :return: `value`.
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def check_data(
    x: Any,
    y: Any,
    input_shape: tuple[int, ...],
    nb_classes: int,
    clip_values: Any = None,
    name: str = "x",
) -> tuple[np.ndarray, np.ndarray]:
    """
    Validate a data set and return ``(x as float32, y as int64 class indices)``.

    :param x: Inputs, numpy array or tensor of shape ``(n, *input_shape)`` with a floating dtype.
    :param y: Labels, class indices ``(n,)`` or one-hot ``(n, nb_classes)``.
    :param input_shape: The classifier's input shape.
    :param nb_classes: The number of classes.
    :param clip_values: The classifier's ``(min, max)``; inputs outside it are rejected.
    :param name: Name of the inputs in messages (``"x"``, ``"validation_data[0]"``).
    :raises ValueError: On shape, dtype, NaN/inf, range or label problems.
    """
    x_np = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if x_np.ndim < 1 or tuple(x_np.shape[1:]) != tuple(input_shape):
        raise ValueError(f"`{name}` must have shape (n, {', '.join(map(str, input_shape))}), got {x_np.shape}.")
    if len(x_np) == 0:
        raise ValueError(f"`{name}` is empty.")
    if not np.issubdtype(x_np.dtype, np.floating):
        raise ValueError(
            f"`{name}` must have a floating dtype (scaled inputs, e.g. x.astype(np.float32) / 255), got {x_np.dtype}."
        )
    if not np.isfinite(x_np).all():
        raise ValueError(f"`{name}` contains NaN or inf values.")
    if clip_values is not None:
        low, high = (np.asarray(v, dtype=np.float64) for v in clip_values)
        if (x_np < low - 1e-6).any() or (x_np > high + 1e-6).any():
            raise ValueError(
                f"`{name}` has values in [{x_np.min():.4g}, {x_np.max():.4g}], outside the classifier's clip_values "
                f"({np.min(low):.4g}, {np.max(high):.4g}); rescale the data (e.g. divide by 255)."
            )
    label_name = "y" if name == "x" else name.replace("[0]", "[1]")
    if not (np.issubdtype(y_np.dtype, np.integer) or np.issubdtype(y_np.dtype, np.floating)
            or np.issubdtype(y_np.dtype, np.bool_)):
        raise ValueError(f"`{label_name}` must hold class indices or one-hot rows (numbers), got dtype {y_np.dtype}; "
                         "map string labels to indices first (e.g. sklearn.preprocessing.LabelEncoder).")
    if y_np.ndim == 2:
        if y_np.shape[1] != nb_classes:
            raise ValueError(f"One-hot `{label_name}` must have {nb_classes} columns, got {y_np.shape[1]}.")
        if not np.isfinite(y_np).all():
            raise ValueError(f"`{label_name}` contains NaN or inf values.")
        rows = y_np.astype(np.float64)
        bad = ~(np.isin(rows, (0.0, 1.0)).all(axis=1) & (rows.sum(axis=1) == 1))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"`{label_name}` as one-hot rows must have exactly one 1 and zeros elsewhere; {int(bad.sum())} rows do "
                f"not (first: row {first} = {y_np[first].tolist()}). Soft or all-zero labels are not class labels: "
                "give class indices."
            )
        y_idx = y_np.argmax(axis=1)
    elif y_np.ndim == 1:
        if not (np.issubdtype(y_np.dtype, np.integer) or np.all(np.mod(y_np, 1) == 0)):
            raise ValueError(f"`{label_name}` as class indices must hold integers, got dtype {y_np.dtype}.")
        y_idx = y_np.astype(np.int64)
        if len(y_idx) and (y_idx.min() < 0 or y_idx.max() >= nb_classes):
            raise ValueError(
                f"`{label_name}` has labels in [{y_idx.min()}, {y_idx.max()}], outside [0, {nb_classes - 1}]."
            )
    else:
        raise ValueError(f"`{label_name}` must be class indices (n,) or one-hot (n, {nb_classes}), got {y_np.shape}.")
    if len(y_idx) != len(x_np):
        raise ValueError(f"`{name}` has {len(x_np)} samples but `{label_name}` has {len(y_idx)} labels.")
    return x_np.astype(np.float32, copy=False), y_idx.astype(np.int64, copy=False)


def clip_range(clip_values: Any) -> float | None:
    """
    The width of the input range ``max(high) - min(low)`` of a classifier's ``clip_values`` (``None`` without).

    :param clip_values: ``(min, max)`` (scalars or arrays) or ``None``.
    :return: The width, or ``None``.
    """
    if clip_values is None:
        return None
    low, high = (np.asarray(v, dtype=np.float64) for v in clip_values)
    return float(np.max(high) - np.min(low))


def check_budget_units(name: str, values: Any, clip_values: Any, what: str = "budget") -> None:
    """
    Refuse budgets larger than the whole input range: art_latent takes every budget in input units (``8 / 255`` for
    inputs in ``[0, 1]``), so ``16`` there is a unit mix-up, not a budget.

    :param name: The argument, for the message.
    :param values: A number or numbers (a tensor or array is reduced to its maximum).
    :param clip_values: The classifier's ``clip_values`` (no check without).
    :param what: What the values are, for the message.
    :raises ValueError: Naming `name`, the range and suggesting ``/255``.
    """
    width = clip_range(clip_values)
    if width is None:
        return
    if isinstance(values, torch.Tensor):
        items = [float(values.detach().max())] if values.numel() else []
    else:
        items = [float(np.max(v)) for v in (values if isinstance(values, (list, tuple)) else [values])
                 if v is not None and np.size(v)]
    bad = [v for v in items if math.isfinite(v) and v > width * (1 + 1e-6)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad)
        suggestion = ", ".join(f"{v:g}/255" for v in bad)
        raise ValueError(
            f"`{name}` has {what}(s) {shown}, larger than the whole input range {width:g} of the classifier's "
            f"clip_values: budgets are in input units. Did you mean {suggestion} (i.e. {bad[0] / 255:.4g})?"
        )
