"""
The configuration of a benchmark run (paper 000's k-fold protocol): every size, seed, budget and defense, read from
a TOML file and validated before any work: :class:`ExperimentConfig`, :func:`config_from_dict` and
:func:`load_config`. The sections are in :mod:`art_latent.experiments.specs` and the value checks in
:mod:`art_latent.experiments.config_values`; both are importable from here too, as before.

Budgets and noise levels are written in units of 1/255 (keys ending in ``_255``), as in the paper (``16`` means
``16 / 255``). See ``configs/paper000-fmnist.toml`` for a commented example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art_latent.experiments.config_values import ConfigError, as_int, as_str, as_table, build_section, fail
from art_latent.experiments.specs import (
    DEVICES,
    PAIR_SETS,
    AttackSpec,
    DataSpec,
    DefenseSpec,
    EvaluationSpec,
    ExtraMetricSpec,
    ModelSpec,
    OptimizerSpec,
    PretrainSpec,
    ProtocolSpec,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AttackSpec",
    "ConfigError",
    "DataSpec",
    "DefenseSpec",
    "EvaluationSpec",
    "ExperimentConfig",
    "ExtraMetricSpec",
    "ModelSpec",
    "OptimizerSpec",
    "PAIR_SETS",
    "PretrainSpec",
    "ProtocolSpec",
    "config_from_dict",
    "load_config",
]


@dataclass
class ExperimentConfig:
    """
    A complete benchmark configuration; build it with :func:`load_config` or :func:`config_from_dict`.
    """

    name: str = "benchmark"
    description: str = ""
    seed: int = 0
    #: ``"gpu"`` (CUDA when available, else CPU) or ``"cpu"``.
    device: str = "gpu"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    defenses: tuple[DefenseSpec, ...] = ()
    #: The file the configuration was read from (not part of the hash).
    source: str = ""

    def _validate(self, where: str) -> None:
        as_str(f"{where}name", self.name)
        if not isinstance(self.description, str):
            fail(f"{where}description", "must be a string")
        as_int(f"{where}seed", self.seed)
        as_str(f"{where}device", self.device, DEVICES)
        if not self.defenses:
            fail(f"{where}defenses", "no [[defenses]] given")
        names = [d.name for d in self.defenses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            fail(f"{where}defenses", f"duplicate names {duplicates}")
        if self.evaluation.reference not in names:
            fail(f"{where}evaluation.reference", f"{self.evaluation.reference!r} is not a defense name {names}")
        for defense in self.defenses:
            extra = set(defense.pair_sets or ()) - set(self.protocol.pair_sets)
            if extra:
                fail(f"{where}defenses.{defense.name}.pair_sets",
                      f"{sorted(extra)} not in [protocol].pair_sets {list(self.protocol.pair_sets)}")

    # ------------------------------------------------------------------ helpers

    def pair_sets_of(self, defense: DefenseSpec) -> tuple[str, ...]:
        """The pair sets `defense` is fine-tuned on, in protocol order."""
        chosen = defense.pair_sets or self.protocol.pair_sets
        return tuple(p for p in self.protocol.pair_sets if p in chosen)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    def digest(self, *sections: str) -> str:
        """
        SHA-256 of the given top-level sections (default: everything that changes fold results, i.e. all but
        ``name``, ``description``, ``source``, ``data.path`` and ``protocol.run_folds``).

        :param sections: Top-level keys to include.
        :return: Hex digest (16 characters).
        """
        data = self.to_dict()
        for key in ("name", "description", "source"):
            data.pop(key)
        data["protocol"].pop("run_folds")
        data["data"].pop("path")  # where the files are does not change the results
        if sections:
            data = {k: data[k] for k in sections}
        text = json.dumps(data, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def nb_folds_to_run(self) -> int:
        """``protocol.run_folds`` or, when 0, ``protocol.folds``."""
        return self.protocol.run_folds or self.protocol.folds


def config_from_dict(data: Mapping[str, Any], source: str = "") -> ExperimentConfig:
    """
    Build and validate a configuration from nested dicts (the parsed TOML).

    Every trainer is resolved and its keyword arguments are checked against its constructor here, before any work;
    a defense with ``optional = true`` whose trainer does not exist is dropped with a warning.

    :param data: The configuration.
    :param source: Where it came from (for messages).
    :return: The configuration.
    :raises ValueError: (:class:`ConfigError`) naming the offending key.
    """
    from art_latent.experiments.registry import check_kwarg_values, check_trainer_kwargs, resolve_trainer

    data = dict(as_table("config", data))
    where = f"{source}: " if source else ""
    sections = {"data": DataSpec, "model": ModelSpec, "optimizer": OptimizerSpec, "pretrain": PretrainSpec,
                "protocol": ProtocolSpec, "attack": AttackSpec, "evaluation": EvaluationSpec}
    kwargs: dict[str, Any] = {}
    for key, cls in sections.items():
        kwargs[key] = build_section(cls, data.pop(key, None), f"{where}[{key}]")
    raw_defenses = data.pop("defenses", [])
    if not isinstance(raw_defenses, list):
        fail(f"{where}defenses", "must be an array of tables ([[defenses]])")
    defenses = []
    for index, raw in enumerate(raw_defenses):
        label = f"{where}[[defenses]] #{index + 1}"
        defense = build_section(DefenseSpec, raw, label)
        try:
            cls = resolve_trainer(defense.trainer)
        except (ValueError, ImportError) as error:
            if defense.optional:
                logger.warning("Skipping optional defense %r: %s", defense.name, error)
                continue
            fail(f"{label} ({defense.name}).trainer", str(error))
        try:
            check_trainer_kwargs(cls, defense.kwargs)
            check_kwarg_values(defense.kwargs)
        except (TypeError, ValueError) as error:
            fail(f"{label} ({defense.name}).kwargs", str(error))
        defenses.append(defense)
    kwargs["defenses"] = tuple(defenses)
    top = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(sections) - {"defenses", "source"}
    unknown = sorted(set(data) - top)
    if unknown:
        fail(f"{where}config", f"unknown top-level key(s) {unknown}; accepted: {sorted(top | set(sections))} and "
                                "[[defenses]]")
    config = ExperimentConfig(**data, **kwargs, source=source)
    config._validate(where)
    return config


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """
    Read and validate a TOML configuration file.

    :param path: The ``.toml`` file.
    :return: The configuration.
    :raises FileNotFoundError: If the file does not exist.
    :raises ValueError: On a TOML syntax error or an invalid value (the message names the key).
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Configuration file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error
    return config_from_dict(data, source=str(path))
