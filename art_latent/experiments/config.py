"""
The configuration of a benchmark run (paper 000's k-fold protocol): every size, seed, budget and defense, read from
a TOML file and validated before any work.

Budgets and noise levels are written in units of 1/255 (keys ending in ``_255``), as in the paper (``16`` means
``16 / 255``). See ``configs/paper000-fmnist.toml`` for a commented example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art_latent.validation import check_choice, check_int, check_range

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

#: The fine-tuning sets of paper 000: ``D`` (benign/adversarial pairs) and ``D_N`` (plus benign/noisy pairs).
PAIR_SETS = ("D", "D_N")
POOLS = ("train+test", "train")
DEVICES = ("cpu", "gpu")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range (the message names the key)."""


def _fail(where: str, message: str) -> None:
    raise ConfigError(f"{where}: {message}")


def _checked(where: str, check: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a check of :mod:`art_latent.validation` on the key `where`; its ``ValueError`` becomes a ConfigError."""
    try:
        return check(where, *args, **kwargs)
    except ValueError as error:
        text, named = str(error), f"`{where}` "
        raise ConfigError(f"{where}: {text[len(named):] if text.startswith(named) else text}") from None


def _int(where: str, value: Any, minimum: int = 0) -> int:
    return int(_checked(where, check_int, value, minimum=minimum))


def _number(where: str, value: Any, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> float:
    return float(_checked(where, check_range, value, low, high, low_open=low_open, high_open=high == math.inf))


def _numbers(where: str, value: Any, allow_empty: bool = False) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        _fail(where, f"must be a {'' if allow_empty else 'non-empty '}list of numbers >= 0, got {value!r}")
    return tuple(_number(f"{where}[{i}]", v) for i, v in enumerate(value))


def _str(where: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        _fail(where, f"must be a non-empty string, got {value!r}")
    if choices is not None:
        _checked(where, check_choice, value, tuple(choices))
    return value


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        _fail(where, f"must be a table (dict), got {value!r}")
    return dict(value)


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a TOML table, rejecting unknown keys; values are checked in ``__post_init__``."""
    data = _table(where, {} if data is None else data)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        _fail(where, f"unknown key(s) {unknown}; accepted keys: {names}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        _fail(where, f"missing required key(s) {missing}")
    obj = cls(**data)
    obj._validate(where)
    return obj


@dataclass
class DataSpec:
    """``[data]``: which data set forms the pool the protocol splits."""

    #: Name for :func:`art_latent.data.load_dataset`: ``bundled``, ``fashion-mnist``, ``mnist``, ``cifar10``.
    dataset: str = "bundled"
    #: Directory of the data files (not for ``bundled``); empty: the loader's default places.
    path: str = ""
    #: ``"train+test"`` (the paper: the unseen training *and* test data are split into folds) or ``"train"``.
    pool: str = "train+test"
    #: Use a stratified random subset of this many pool samples (0: all).
    limit: int = 0

    def _validate(self, where: str) -> None:
        _str(f"{where}.dataset", self.dataset)
        if not isinstance(self.path, str):
            _fail(f"{where}.path", f"must be a string, got {self.path!r}")
        _str(f"{where}.pool", self.pool, POOLS)
        _int(f"{where}.limit", self.limit)


@dataclass
class ModelSpec:
    """``[model]``: the network (a name of :func:`art_latent.models.build_model` or ``"package.module:callable"``)."""

    name: str = "vgg16"
    #: Keyword arguments of the model (``width`` for the VGG); ``in_channels``, ``num_classes`` and ``input_size``
    #: are filled from the data for the built-in models.
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Latent layers (``LatentClassifier``'s ``layers``): ``"auto"``, names, patterns.
    layers: str | list[str] = "auto"

    def _validate(self, where: str) -> None:
        _str(f"{where}.name", self.name)
        _table(f"{where}.kwargs", self.kwargs)
        if ":" in self.name:
            import torch

            from art_latent.experiments.registry import resolve_object

            try:
                resolve_object(self.name, torch.nn.Module)
            except (ValueError, ImportError, AttributeError) as error:
                _fail(f"{where}.name", str(error))
        if not isinstance(self.layers, str) and not (isinstance(self.layers, list)
                                                     and all(isinstance(v, str) for v in self.layers)):
            _fail(f"{where}.layers", f"must be a string or a list of strings, got {self.layers!r}")


@dataclass
class OptimizerSpec:
    """``[optimizer]``: a ``torch.optim`` class by name (the paper: Nadam), a fresh one per model."""

    name: str = "NAdam"
    lr: float = 1e-3
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        import torch

        _str(f"{where}.name", self.name)
        cls = getattr(torch.optim, self.name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            _fail(f"{where}.name", f"{self.name!r} is not a torch.optim optimizer (e.g. 'NAdam', 'Adam', 'SGD')")
        _number(f"{where}.lr", self.lr, low_open=True)
        _table(f"{where}.kwargs", self.kwargs)


@dataclass
class PretrainSpec:
    """``[pretrain]``: the model is pre-trained once on a random stratified subset, which is then discarded."""

    samples: int = 10000
    epochs: int = 100
    batch_size: int = 64
    #: Fraction of the pre-training subset held out for early stopping (0: none).
    validation_fraction: float = 0.1
    #: Stop when the validation loss has not improved for this many epochs, keeping the best weights (0: off).
    patience: int = 0

    def _validate(self, where: str) -> None:
        _int(f"{where}.samples", self.samples, 1)
        _int(f"{where}.epochs", self.epochs, 1)
        _int(f"{where}.batch_size", self.batch_size, 1)
        _number(f"{where}.validation_fraction", self.validation_fraction, 0.0, 0.9)
        _int(f"{where}.patience", self.patience)
        if self.patience and not self.validation_fraction:
            _fail(f"{where}.patience", "early stopping needs a validation set: set validation_fraction > 0")


@dataclass
class ProtocolSpec:
    """``[protocol]``: the stratified k-fold fine-tuning experiment."""

    folds: int = 10
    #: Run only the first this many folds (0: all); raising it later continues the same run.
    run_folds: int = 0
    #: Benign samples drawn (stratified) from each fold's training part to build the pair sets (0: all of it).
    finetune_samples: int = 6000
    #: Cap of each fold's test part (stratified subset; 0: all of it).
    test_samples: int = 0
    epochs: int = 10
    batch_size: int = 64
    #: Budgets of the adversarial pairs, in 1/255 (0 gives the benign pair (x, x)).
    budgets_255: tuple[float, ...] = (0.0, 16.0, 32.0)
    #: Standard deviation of the noise pairs of D_N, in 1/255.
    noise_sigma_255: float = 32.0
    #: The experiments to run: ``"D"`` and/or ``"D_N"``.
    pair_sets: tuple[str, ...] = ("D", "D_N")

    def _validate(self, where: str) -> None:
        _int(f"{where}.folds", self.folds, 2)
        _int(f"{where}.run_folds", self.run_folds)
        if self.run_folds > self.folds:
            _fail(f"{where}.run_folds", f"must be <= folds ({self.folds}), got {self.run_folds}")
        _int(f"{where}.finetune_samples", self.finetune_samples)
        _int(f"{where}.test_samples", self.test_samples)
        _int(f"{where}.epochs", self.epochs, 1)
        _int(f"{where}.batch_size", self.batch_size, 1)
        self.budgets_255 = _numbers(f"{where}.budgets_255", self.budgets_255)
        _number(f"{where}.noise_sigma_255", self.noise_sigma_255, low_open=True)
        if not isinstance(self.pair_sets, (list, tuple)) or not self.pair_sets:
            _fail(f"{where}.pair_sets", f"must be a non-empty list from {list(PAIR_SETS)}")
        self.pair_sets = tuple(_str(f"{where}.pair_sets", p, PAIR_SETS) for p in self.pair_sets)
        if len(set(self.pair_sets)) != len(self.pair_sets):
            _fail(f"{where}.pair_sets", f"has duplicates: {list(self.pair_sets)}")


@dataclass
class AttackSpec:
    """``[attack]`` (and a defense's ``attack``): the ART attack given to trainers that take an ``attack``."""

    #: A class of ``art.attacks.evasion`` (e.g. ``FastGradientMethod``) or ``"package.module:Class"``.
    name: str = "FastGradientMethod"
    eps_255: float = 16.0
    #: Step size in 1/255 for iterative attacks (default: the attack's own).
    eps_step_255: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        _str(f"{where}.name", self.name)
        _number(f"{where}.eps_255", self.eps_255)
        if self.eps_step_255 is not None:
            _number(f"{where}.eps_step_255", self.eps_step_255, low_open=True)
        _table(f"{where}.kwargs", self.kwargs)
        from art_latent.experiments.registry import resolve_attack

        try:
            resolve_attack(self.name)
        except (ValueError, ImportError) as error:
            _fail(f"{where}.name", str(error))


@dataclass
class ExtraMetricSpec:
    """``[[evaluation.extra_metrics]]``: a function ``fn(classifier, x, y, **kwargs)`` returning numbers."""

    name: str
    #: ``"package.module:function"``.
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        _str(f"{where}.name", self.name)
        _str(f"{where}.function", self.function)
        _table(f"{where}.kwargs", self.kwargs)
        from art_latent.experiments.registry import resolve_function

        try:
            fn = resolve_function(self.function)
        except (ValueError, ImportError, AttributeError) as error:
            _fail(f"{where}.function", str(error))
        if not callable(fn):
            _fail(f"{where}.function", f"{self.function!r} is not callable")


@dataclass
class EvaluationSpec:
    """``[evaluation]``: the attack suite of :class:`~art_latent.analysis.report.RobustnessReport` per fold."""

    attacks: tuple[str, ...] = ("fgsm", "noise")
    eps_255: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    sigmas_255: tuple[float, ...] = (0.0, 8.0, 16.0, 32.0, 64.0)
    #: FGSM budget of the per-layer perturbation error (paper 000, Fig. 6: 8/255); 0 skips it.
    perturbation_eps_255: float = 8.0
    pgd_max_iter: int = 10
    #: PGD step as a fraction of eps; omitted: ``2.5 / pgd_max_iter``.
    pgd_step_ratio: float | None = None
    pgd_restarts: int = 1
    transfer_attack: str = "pgd"
    autoattack_kwargs: dict[str, Any] = field(default_factory=dict)
    #: ``"standard"`` or ``"fast"`` (when ``attacks`` has ``"autoattack"``).
    autoattack_preset: str = "standard"
    masking_tolerance: float = 0.01
    #: Run the gradient-masking checklist per model and fold (PGD over the whole range, stronger PGD, Square).
    masking_checks: bool = False
    batch_size: int = 256
    #: The undefended defense (its name in ``[[defenses]]``): baseline of the gains and transfer source.
    reference: str = "undefended"
    confidence: float = 0.95
    extra_metrics: tuple[ExtraMetricSpec, ...] = ()

    def _validate(self, where: str) -> None:
        from art_latent.registries.evaluation_attacks import attack_names

        ATTACKS = attack_names()

        if not isinstance(self.attacks, (list, tuple)) or not self.attacks:
            _fail(f"{where}.attacks", f"must be a non-empty list from {list(ATTACKS)}")
        self.attacks = tuple(_str(f"{where}.attacks", a, ATTACKS) for a in self.attacks)
        self.eps_255 = _numbers(f"{where}.eps_255", self.eps_255)
        self.sigmas_255 = _numbers(f"{where}.sigmas_255", self.sigmas_255, allow_empty="noise" not in self.attacks)
        _number(f"{where}.perturbation_eps_255", self.perturbation_eps_255)
        _int(f"{where}.pgd_max_iter", self.pgd_max_iter, 1)
        if self.pgd_step_ratio is not None:
            _number(f"{where}.pgd_step_ratio", self.pgd_step_ratio, low_open=True)
        _int(f"{where}.pgd_restarts", self.pgd_restarts)
        _str(f"{where}.transfer_attack", self.transfer_attack, ("pgd", "fgsm"))
        _table(f"{where}.autoattack_kwargs", self.autoattack_kwargs)
        _str(f"{where}.autoattack_preset", self.autoattack_preset, ("standard", "fast"))
        if not isinstance(self.masking_checks, bool):
            _fail(f"{where}.masking_checks", f"must be true or false, got {self.masking_checks!r}")
        _number(f"{where}.masking_tolerance", self.masking_tolerance, 0.0, 1.0)
        _int(f"{where}.batch_size", self.batch_size, 1)
        _str(f"{where}.reference", self.reference)
        _number(f"{where}.confidence", self.confidence, 0.0, 0.999999, low_open=True)
        if not isinstance(self.extra_metrics, (list, tuple)):
            _fail(f"{where}.extra_metrics", "must be a list of tables {name, function, kwargs}")
        self.extra_metrics = tuple(
            m if isinstance(m, ExtraMetricSpec) else _build(ExtraMetricSpec, m, f"{where}.extra_metrics[{i}]")
            for i, m in enumerate(self.extra_metrics)
        )


@dataclass
class DefenseSpec:
    """``[[defenses]]``: one defense, a trainer class with keyword arguments."""

    #: Unique label in tables and figures.
    name: str
    #: Trainer class name in :mod:`art_latent.trainers` / :mod:`art_latent.defences`, or ``"package.module:Class"``.
    trainer: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Pair sets this defense is fine-tuned on (default: all of ``[protocol].pair_sets``).
    pair_sets: tuple[str, ...] | None = None
    #: The attack given to the trainer when it takes one (default: ``[attack]``).
    attack: AttackSpec | None = None
    #: Fine-tuning epochs (default: ``[protocol].epochs``).
    epochs: int | None = None
    #: Skip (with a warning) instead of failing when the trainer class does not exist.
    optional: bool = False

    def _validate(self, where: str) -> None:
        _str(f"{where}.name", self.name)
        _str(f"{where}.trainer", self.trainer)
        _table(f"{where}.kwargs", self.kwargs)
        if self.pair_sets is not None:
            if not isinstance(self.pair_sets, (list, tuple)) or not self.pair_sets:
                _fail(f"{where}.pair_sets", f"must be a non-empty list from {list(PAIR_SETS)}")
            self.pair_sets = tuple(_str(f"{where}.pair_sets", p, PAIR_SETS) for p in self.pair_sets)
        if self.attack is not None and not isinstance(self.attack, AttackSpec):
            self.attack = _build(AttackSpec, self.attack, f"{where}.attack")
        if self.epochs is not None:
            _int(f"{where}.epochs", self.epochs, 1)
        if not isinstance(self.optional, bool):
            _fail(f"{where}.optional", f"must be true or false, got {self.optional!r}")


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
        _str(f"{where}name", self.name)
        if not isinstance(self.description, str):
            _fail(f"{where}description", "must be a string")
        _int(f"{where}seed", self.seed)
        _str(f"{where}device", self.device, DEVICES)
        if not self.defenses:
            _fail(f"{where}defenses", "no [[defenses]] given")
        names = [d.name for d in self.defenses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            _fail(f"{where}defenses", f"duplicate names {duplicates}")
        if self.evaluation.reference not in names:
            _fail(f"{where}evaluation.reference", f"{self.evaluation.reference!r} is not a defense name {names}")
        for defense in self.defenses:
            extra = set(defense.pair_sets or ()) - set(self.protocol.pair_sets)
            if extra:
                _fail(f"{where}defenses.{defense.name}.pair_sets",
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

    data = dict(_table("config", data))
    where = f"{source}: " if source else ""
    sections = {"data": DataSpec, "model": ModelSpec, "optimizer": OptimizerSpec, "pretrain": PretrainSpec,
                "protocol": ProtocolSpec, "attack": AttackSpec, "evaluation": EvaluationSpec}
    kwargs: dict[str, Any] = {}
    for key, cls in sections.items():
        kwargs[key] = _build(cls, data.pop(key, None), f"{where}[{key}]")
    raw_defenses = data.pop("defenses", [])
    if not isinstance(raw_defenses, list):
        _fail(f"{where}defenses", "must be an array of tables ([[defenses]])")
    defenses = []
    for index, raw in enumerate(raw_defenses):
        label = f"{where}[[defenses]] #{index + 1}"
        defense = _build(DefenseSpec, raw, label)
        try:
            cls = resolve_trainer(defense.trainer)
        except (ValueError, ImportError) as error:
            if defense.optional:
                logger.warning("Skipping optional defense %r: %s", defense.name, error)
                continue
            _fail(f"{label} ({defense.name}).trainer", str(error))
        try:
            check_trainer_kwargs(cls, defense.kwargs)
            check_kwarg_values(defense.kwargs)
        except (TypeError, ValueError) as error:
            _fail(f"{label} ({defense.name}).kwargs", str(error))
        defenses.append(defense)
    kwargs["defenses"] = tuple(defenses)
    top = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(sections) - {"defenses", "source"}
    unknown = sorted(set(data) - top)
    if unknown:
        _fail(f"{where}config", f"unknown top-level key(s) {unknown}; accepted: {sorted(top | set(sections))} and "
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
