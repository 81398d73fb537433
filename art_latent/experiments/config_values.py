"""
Checks of single configuration values: each names its key (``[protocol].folds``) in a :class:`ConfigError`, and
:func:`build_section` builds one section dataclass from a TOML table, rejecting unknown and missing keys. The sections
are in :mod:`art_latent.experiments.specs`, the whole configuration in :mod:`art_latent.experiments.config`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from art_latent.validation import check_choice, check_int, check_range

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "as_int", "as_number", "as_numbers", "as_str", "as_table", "build_section", "checked", "fail"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range (the message names the key)."""


def fail(where: str, message: str) -> NoReturn:
    """
    Refuse a configuration value.

    :param where: The key (``"config.toml: [protocol].folds"``).
    :param message: What is wrong with it.
    :raises ConfigError: Always, as ``"{where}: {message}"``.
    """
    raise ConfigError(f"{where}: {message}")


def checked(where: str, check: Any, *args: Any, **kwargs: Any) -> Any:
    """
    Run a check of :mod:`art_latent.validation` on the key `where`; its ``ValueError`` becomes a :class:`ConfigError`.

    :param where: The key.
    :param check: The check, called as ``check(where, *args, **kwargs)``.
    :return: What the check returns.
    :raises ConfigError: If the check refuses the value.
    """
    try:
        return check(where, *args, **kwargs)
    except ValueError as error:
        text, named = str(error), f"`{where}` "
        raise ConfigError(f"{where}: {text[len(named):] if text.startswith(named) else text}") from None


def as_int(where: str, value: Any, minimum: int = 0) -> int:
    """
    An integer value.

    :param where: The key.
    :param value: The value read.
    :param minimum: The smallest value accepted.
    :return: The value.
    :raises ConfigError: If it is not an integer ``>= minimum``.
    """
    return int(checked(where, check_int, value, minimum=minimum))


def as_number(where: str, value: Any, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> float:
    """
    A number in ``[low, high]`` (``(low, high]`` with `low_open`; `high` open when infinite).

    :param where: The key.
    :param value: The value read.
    :param low: The lower bound.
    :param high: The upper bound.
    :param low_open: Exclude `low`.
    :return: The value as a float.
    :raises ConfigError: If it is not a number in range.
    """
    return float(checked(where, check_range, value, low, high, low_open=low_open, high_open=high == math.inf))


def as_numbers(where: str, value: Any, allow_empty: bool = False) -> tuple[float, ...]:
    """
    A list of numbers ``>= 0``.

    :param where: The key.
    :param value: The value read.
    :param allow_empty: Accept an empty list.
    :return: The numbers as floats.
    :raises ConfigError: If it is not such a list.
    """
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        fail(where, f"must be a {'' if allow_empty else 'non-empty '}list of numbers >= 0, got {value!r}")
    return tuple(as_number(f"{where}[{i}]", v) for i, v in enumerate(value))


def as_str(where: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    """
    A non-empty string, optionally one of `choices`.

    :param where: The key.
    :param value: The value read.
    :param choices: The accepted values (``None``: any).
    :return: The value.
    :raises ConfigError: If it is not a non-empty string, or not one of `choices`.
    """
    if not isinstance(value, str) or not value:
        fail(where, f"must be a non-empty string, got {value!r}")
    if choices is not None:
        checked(where, check_choice, value, tuple(choices))
    return value


def as_table(where: str, value: Any) -> dict[str, Any]:
    """
    A table (a TOML table, or any mapping).

    :param where: The key.
    :param value: The value read.
    :return: A dict copy.
    :raises ConfigError: If it is not a mapping.
    """
    if not isinstance(value, Mapping):
        fail(where, f"must be a table (dict), got {value!r}")
    return dict(value)


def build_section(cls: type, data: Any, where: str) -> Any:
    """
    Build a section dataclass from a TOML table, rejecting unknown and missing keys; its ``_validate(where)`` then
    checks the values.

    :param cls: The section class (:mod:`art_latent.experiments.specs`).
    :param data: The table (``None``: empty, every default).
    :param where: The section's key, for messages.
    :return: The section.
    :raises ConfigError: On an unknown or missing key, or an invalid value.
    """
    data = as_table(where, {} if data is None else data)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        fail(where, f"unknown key(s) {unknown}; accepted keys: {names}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        fail(where, f"missing required key(s) {missing}")
    obj = cls(**data)
    obj._validate(where)
    return obj
