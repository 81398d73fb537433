"""
The sections of a benchmark configuration (``[data]``, ``[model]``, ``[optimizer]``, ``[pretrain]``, ``[protocol]``,
``[attack]``, ``[evaluation]``, ``[[defenses]]``): one dataclass each, whose ``_validate`` checks every value and
names its key. :class:`~art_latent.experiments.config.ExperimentConfig` holds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from art_latent.experiments.config_values import as_int, as_number, as_numbers, as_str, as_table, build_section, fail

logger = logging.getLogger(__name__)

__all__ = ["AttackSpec", "DataSpec", "DefenseSpec", "EvaluationSpec", "ExtraMetricSpec", "ModelSpec", "OptimizerSpec",
           "PAIR_SETS", "PretrainSpec", "ProtocolSpec"]

#: The fine-tuning sets of paper 000: ``D`` (benign/adversarial pairs) and ``D_N`` (plus benign/noisy pairs).
PAIR_SETS = ("D", "D_N")
POOLS = ("train+test", "train")
DEVICES = ("cpu", "gpu")


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
        as_str(f"{where}.dataset", self.dataset)
        if not isinstance(self.path, str):
            fail(f"{where}.path", f"must be a string, got {self.path!r}")
        as_str(f"{where}.pool", self.pool, POOLS)
        as_int(f"{where}.limit", self.limit)


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
        as_str(f"{where}.name", self.name)
        as_table(f"{where}.kwargs", self.kwargs)
        if ":" in self.name:
            import torch

            from art_latent.experiments.registry import resolve_object

            try:
                resolve_object(self.name, torch.nn.Module)
            except (ValueError, ImportError, AttributeError) as error:
                fail(f"{where}.name", str(error))
        if not isinstance(self.layers, str) and not (isinstance(self.layers, list)
                                                     and all(isinstance(v, str) for v in self.layers)):
            fail(f"{where}.layers", f"must be a string or a list of strings, got {self.layers!r}")


@dataclass
class OptimizerSpec:
    """``[optimizer]``: a ``torch.optim`` class by name (the paper: Nadam), a fresh one per model."""

    name: str = "NAdam"
    lr: float = 1e-3
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        import torch

        as_str(f"{where}.name", self.name)
        cls = getattr(torch.optim, self.name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            fail(f"{where}.name", f"{self.name!r} is not a torch.optim optimizer (e.g. 'NAdam', 'Adam', 'SGD')")
        as_number(f"{where}.lr", self.lr, low_open=True)
        as_table(f"{where}.kwargs", self.kwargs)


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
        as_int(f"{where}.samples", self.samples, 1)
        as_int(f"{where}.epochs", self.epochs, 1)
        as_int(f"{where}.batch_size", self.batch_size, 1)
        as_number(f"{where}.validation_fraction", self.validation_fraction, 0.0, 0.9)
        as_int(f"{where}.patience", self.patience)
        if self.patience and not self.validation_fraction:
            fail(f"{where}.patience", "early stopping needs a validation set: set validation_fraction > 0")


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
        as_int(f"{where}.folds", self.folds, 2)
        as_int(f"{where}.run_folds", self.run_folds)
        if self.run_folds > self.folds:
            fail(f"{where}.run_folds", f"must be <= folds ({self.folds}), got {self.run_folds}")
        as_int(f"{where}.finetune_samples", self.finetune_samples)
        as_int(f"{where}.test_samples", self.test_samples)
        as_int(f"{where}.epochs", self.epochs, 1)
        as_int(f"{where}.batch_size", self.batch_size, 1)
        self.budgets_255 = as_numbers(f"{where}.budgets_255", self.budgets_255)
        as_number(f"{where}.noise_sigma_255", self.noise_sigma_255, low_open=True)
        if not isinstance(self.pair_sets, (list, tuple)) or not self.pair_sets:
            fail(f"{where}.pair_sets", f"must be a non-empty list from {list(PAIR_SETS)}")
        self.pair_sets = tuple(as_str(f"{where}.pair_sets", p, PAIR_SETS) for p in self.pair_sets)
        if len(set(self.pair_sets)) != len(self.pair_sets):
            fail(f"{where}.pair_sets", f"has duplicates: {list(self.pair_sets)}")


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
        as_str(f"{where}.name", self.name)
        as_number(f"{where}.eps_255", self.eps_255)
        if self.eps_step_255 is not None:
            as_number(f"{where}.eps_step_255", self.eps_step_255, low_open=True)
        as_table(f"{where}.kwargs", self.kwargs)
        from art_latent.experiments.registry import resolve_attack

        try:
            resolve_attack(self.name)
        except (ValueError, ImportError) as error:
            fail(f"{where}.name", str(error))


@dataclass
class ExtraMetricSpec:
    """``[[evaluation.extra_metrics]]``: a function ``fn(classifier, x, y, **kwargs)`` returning numbers."""

    name: str
    #: ``"package.module:function"``.
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        as_str(f"{where}.name", self.name)
        as_str(f"{where}.function", self.function)
        as_table(f"{where}.kwargs", self.kwargs)
        from art_latent.experiments.registry import resolve_function

        try:
            fn = resolve_function(self.function)
        except (ValueError, ImportError, AttributeError) as error:
            fail(f"{where}.function", str(error))
        if not callable(fn):
            fail(f"{where}.function", f"{self.function!r} is not callable")


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
            fail(f"{where}.attacks", f"must be a non-empty list from {list(ATTACKS)}")
        self.attacks = tuple(as_str(f"{where}.attacks", a, ATTACKS) for a in self.attacks)
        self.eps_255 = as_numbers(f"{where}.eps_255", self.eps_255)
        self.sigmas_255 = as_numbers(f"{where}.sigmas_255", self.sigmas_255, allow_empty="noise" not in self.attacks)
        as_number(f"{where}.perturbation_eps_255", self.perturbation_eps_255)
        as_int(f"{where}.pgd_max_iter", self.pgd_max_iter, 1)
        if self.pgd_step_ratio is not None:
            as_number(f"{where}.pgd_step_ratio", self.pgd_step_ratio, low_open=True)
        as_int(f"{where}.pgd_restarts", self.pgd_restarts)
        as_str(f"{where}.transfer_attack", self.transfer_attack, ("pgd", "fgsm"))
        as_table(f"{where}.autoattack_kwargs", self.autoattack_kwargs)
        as_str(f"{where}.autoattack_preset", self.autoattack_preset, ("standard", "fast"))
        if not isinstance(self.masking_checks, bool):
            fail(f"{where}.masking_checks", f"must be true or false, got {self.masking_checks!r}")
        as_number(f"{where}.masking_tolerance", self.masking_tolerance, 0.0, 1.0)
        as_int(f"{where}.batch_size", self.batch_size, 1)
        as_str(f"{where}.reference", self.reference)
        as_number(f"{where}.confidence", self.confidence, 0.0, 0.999999, low_open=True)
        if not isinstance(self.extra_metrics, (list, tuple)):
            fail(f"{where}.extra_metrics", "must be a list of tables {name, function, kwargs}")
        self.extra_metrics = tuple(
            m if isinstance(m, ExtraMetricSpec) else build_section(ExtraMetricSpec, m, f"{where}.extra_metrics[{i}]")
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
        as_str(f"{where}.name", self.name)
        as_str(f"{where}.trainer", self.trainer)
        as_table(f"{where}.kwargs", self.kwargs)
        if self.pair_sets is not None:
            if not isinstance(self.pair_sets, (list, tuple)) or not self.pair_sets:
                fail(f"{where}.pair_sets", f"must be a non-empty list from {list(PAIR_SETS)}")
            self.pair_sets = tuple(as_str(f"{where}.pair_sets", p, PAIR_SETS) for p in self.pair_sets)
        if self.attack is not None and not isinstance(self.attack, AttackSpec):
            self.attack = build_section(AttackSpec, self.attack, f"{where}.attack")
        if self.epochs is not None:
            as_int(f"{where}.epochs", self.epochs, 1)
        if not isinstance(self.optional, bool):
            fail(f"{where}.optional", f"must be true or false, got {self.optional!r}")

