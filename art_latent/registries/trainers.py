"""
The registry of trainers: one :class:`TrainerEntry` per trainer, with the class (imported when first needed), its
:class:`ProtocolContract` (what the k-fold protocol of :mod:`art_latent.experiments` hands it) and a tiny test factory
that the parametrised tests build and fit. The benchmark configuration, the protocol and the tests read the trainers
from here; a trainer registered here is run and tested by them without further changes.

Adding a trainer is its class plus one entry: a line in :data:`BUILTIN` for the package's own, or, for a third-party
package, an entry point in the group ``art_latent.trainers`` naming a :class:`TrainerEntry` (or a function returning
one):

.. code-block:: toml

    [project.entry-points."art_latent.trainers"]
    MyTrainer = "my_package.registry:MY_TRAINER"

or, at run time, :func:`register_trainer`. Imports stay lazy: this module imports neither torch nor ART.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "ProtocolContract", "TrainerEntry", "register_trainer", "trainer_entries",
           "trainer_entry", "trainer_entry_for", "trainer_names", "trainer_parameters"]

#: The entry-point group of third-party trainers.
ENTRY_POINT_GROUP = "art_latent.trainers"


@dataclass(frozen=True)
class ProtocolContract:
    """
    What the k-fold protocol hands a trainer's constructor, besides the classifier and the configuration's keyword
    arguments (which take precedence). Declared, not read from the constructor's parameter names: a renamed
    argument fails the registry test instead of silently changing an experiment.
    """

    #: Takes ``budgets``: builds its own pairs from the benign samples (else it gets each benign sample once per
    #: budget).
    budgets: bool = False
    #: Takes ``noise_sigma`` for the pair set ``D_N`` (else it gets the noisy samples as extra training samples).
    noise_sigma: bool = False
    #: Takes ``attack``: the configuration's ART attack, built on the model being fine-tuned.
    attack: bool = False
    #: Takes ``seed``: the fold's seed.
    seed: bool = True

    def arguments(self) -> tuple[str, ...]:
        """The constructor arguments the contract names."""
        return tuple(name for name in ("budgets", "noise_sigma", "attack", "seed") if getattr(self, name))

    @classmethod
    def infer(cls, trainer: type) -> ProtocolContract:
        """
        The contract of an unregistered trainer, read from its constructor's parameters (a configuration naming a
        class by ``"package.module:Class"``); registering the trainer declares it instead.

        :param trainer: The class.
        :return: The contract.
        """
        params, _ = trainer_parameters(trainer)
        return cls(**{name: name in params for name in ("budgets", "noise_sigma", "attack", "seed")})


def trainer_parameters(cls: type[Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """
    The keyword parameters a trainer's constructor accepts, following ``**kwargs`` into
    :class:`~art_latent.trainers.base.LatentTrainer` for its subclasses.

    :param cls: The trainer class.
    :return: ``(parameters by name, accepts any keyword)``.
    """
    from art_latent.trainers.base import LatentTrainer

    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items()
              if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if var_keyword and issubclass(cls, LatentTrainer) and cls is not LatentTrainer:
        base = dict(inspect.signature(LatentTrainer.__init__).parameters)
        base.pop("self", None)
        for key, param in base.items():
            params.setdefault(key, param)
        var_keyword = False
    return params, var_keyword


#: ``factory(classifier, seed)``: a small, fast instance of the trainer for the tests (ART's FGSM at eps 0.1 as its
#: attack, where it takes one).
TestFactory = Callable[[Any, int], Any]


@dataclass(frozen=True)
class TrainerEntry:
    """One registered trainer."""

    #: The class name, as configurations name it (``"HLDRTrainer"``).
    name: str
    #: Where the class lives, ``"package.module:Class"`` (imported by :meth:`load`).
    path: str
    #: What the protocol hands it.
    contract: ProtocolContract = field(default_factory=ProtocolContract)
    #: A small instance for the parametrised tests; ``None`` leaves the trainer out of them.
    test_factory: TestFactory | None = None
    #: Short name of the tests and benchmark tables (``"hldr"``).
    key: str = ""

    def load(self) -> type:
        """The trainer class."""
        module, _, attribute = self.path.partition(":")
        return getattr(importlib.import_module(module), attribute)


def _fgsm(classifier: Any) -> Any:
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(classifier, eps=0.1)


def _plain(clf: Any, seed: int) -> Any:
    from art_latent.trainers import LatentTrainer

    return LatentTrainer(clf, seed=seed)


def _hldr(clf: Any, seed: int) -> Any:
    from art_latent.trainers import HLDRTrainer

    return HLDRTrainer(clf, _fgsm(clf), seed=seed)


def _fimr(clf: Any, seed: int) -> Any:
    from art_latent.trainers import FIMRTrainer

    return FIMRTrainer(clf, seed=seed)


def _agnt(clf: Any, seed: int) -> Any:
    from art_latent.trainers import GaussianNoiseTrainer

    return GaussianNoiseTrainer(clf, seed=seed)


def _stability(clf: Any, seed: int) -> Any:
    from art_latent.trainers import StabilityTrainer

    return StabilityTrainer(clf, seed=seed)


def _afd(clf: Any, seed: int) -> Any:
    from art_latent.trainers import AFDTrainer

    return AFDTrainer(clf, _fgsm(clf), validation_attack=None, seed=seed)


def _deep_defense(clf: Any, seed: int) -> Any:
    from art_latent.trainers import DeepDefenseTrainer

    return DeepDefenseTrainer(clf, seed=seed)


def _layerwise(clf: Any, seed: int) -> Any:
    from art_latent.trainers import LayerwisePerturbationTrainer

    return LayerwisePerturbationTrainer(clf, seed=seed)


def _atlr(clf: Any, seed: int) -> Any:
    from art_latent.trainers import ATLRTrainer

    return ATLRTrainer(clf, _fgsm(clf), seed=seed)


def _denoiser(clf: Any, seed: int) -> Any:
    import torch

    from art_latent.defences import DenoiserTrainer, FeatureGuidedDenoiser

    torch.manual_seed(1)
    network = FeatureGuidedDenoiser(in_channels=int(clf.input_shape[0]), width=4, depth=1,
                                    clip_values=(0.0, 1.0),
                                    device_type="gpu" if clf.device.type == "cuda" else "cpu")
    return DenoiserTrainer(clf, network, _fgsm(clf), budgets=(0.0, 0.1), seed=seed)


_PAIRS = ProtocolContract(budgets=True, noise_sigma=True, attack=True)

#: The package's own trainers.
BUILTIN: tuple[TrainerEntry, ...] = (
    TrainerEntry("LatentTrainer", "art_latent.trainers:LatentTrainer", ProtocolContract(), _plain, "plain"),
    TrainerEntry("HLDRTrainer", "art_latent.trainers:HLDRTrainer", _PAIRS, _hldr, "hldr"),
    TrainerEntry("FIMRTrainer", "art_latent.trainers:FIMRTrainer", ProtocolContract(), _fimr, "fimr"),
    TrainerEntry("GaussianNoiseTrainer", "art_latent.trainers:GaussianNoiseTrainer", ProtocolContract(), _agnt,
                 "agnt"),
    TrainerEntry("StabilityTrainer", "art_latent.trainers:StabilityTrainer", ProtocolContract(), _stability,
                 "stability"),
    TrainerEntry("AFDTrainer", "art_latent.trainers:AFDTrainer", ProtocolContract(attack=True), _afd, "afd"),
    TrainerEntry("DeepDefenseTrainer", "art_latent.trainers:DeepDefenseTrainer", ProtocolContract(), _deep_defense,
                 "deep_defense"),
    TrainerEntry("LayerwisePerturbationTrainer", "art_latent.trainers:LayerwisePerturbationTrainer",
                 ProtocolContract(), _layerwise, "layerwise"),
    TrainerEntry("ATLRTrainer", "art_latent.trainers:ATLRTrainer", ProtocolContract(attack=True), _atlr, "atlr"),
    TrainerEntry("DenoiserTrainer", "art_latent.defences:DenoiserTrainer", _PAIRS, _denoiser, "denoiser"),
)

_REGISTRY: dict[str, TrainerEntry] = {entry.name: entry for entry in BUILTIN}
_ENTRY_POINTS_LOADED = False


def register_trainer(entry: TrainerEntry, replace: bool = False) -> TrainerEntry:
    """
    Add a trainer.

    :param entry: The entry.
    :param replace: Replace an entry of the same name (else that is an error).
    :return: `entry`.
    :raises ValueError: If the name is taken and `replace` is false.
    """
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"A trainer named {entry.name!r} is already registered.")
    _REGISTRY[entry.name] = entry
    return entry


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry = point.load()
            entry = entry() if callable(entry) and not isinstance(entry, TrainerEntry) else entry
            if not isinstance(entry, TrainerEntry):
                raise TypeError(f"it gives a {type(entry).__name__}, not a TrainerEntry")
            if entry.name in _REGISTRY:
                raise ValueError(f"the name {entry.name!r} is taken")
            _REGISTRY[entry.name] = entry
        except Exception as error:  # one broken plug-in must not hide the others
            logger.warning("Ignoring the trainer entry point %s = %s: %s", point.name, point.value, error)


def trainer_entries() -> dict[str, TrainerEntry]:
    """Every registered trainer (built-in, entry points, :func:`register_trainer`), by class name."""
    _load_entry_points()
    return dict(_REGISTRY)


def trainer_names() -> list[str]:
    """The names of the registered trainers and of the entry points not loaded yet, sorted (loads no plug-in)."""
    names = set(_REGISTRY)
    if not _ENTRY_POINTS_LOADED:
        names.update(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def trainer_entry(name: str) -> TrainerEntry | None:
    """
    The entry of a trainer.

    :param name: Its class name (``"HLDRTrainer"``).
    :return: The entry, or ``None`` when no trainer of that name is registered.
    """
    return trainer_entries().get(name)


def trainer_entry_for(cls: type) -> TrainerEntry:
    """
    The entry of a trainer class: its registered one, else one with the contract read from its constructor
    (:meth:`ProtocolContract.infer`).

    :param cls: The class.
    :return: The entry.
    """
    for entry in trainer_entries().values():
        module, _, attribute = entry.path.partition(":")
        if attribute == cls.__name__ and (module == cls.__module__ or entry.load() is cls):
            return entry
    logger.info("%s is not registered in art_latent.registries.trainers; its protocol contract is read from its "
                "constructor.", cls.__qualname__)
    return TrainerEntry(cls.__name__, f"{cls.__module__}:{cls.__qualname__}", ProtocolContract.infer(cls))
