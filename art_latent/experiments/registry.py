"""
Resolve trainers, attacks and functions named in a configuration, and build a trainer for one fine-tuning job.

Trainers are looked up by class name in the trainer registry (:mod:`art_latent.registries.trainers`: the package's
own, those of installed packages' ``art_latent.trainers`` entry points and those registered at run time), or by a
full ``"package.module:Class"`` path. Other classes (``{object = "Class"}``) are looked up in the exports of
``art_latent.trainers`` and ``art_latent.defences``, or by path.

A configuration is code-like input: a ``"package.module:Class"`` path imports that module. What a path may name is
restricted so that a configuration cannot call an arbitrary function (``"os:system"``): only classes derived from
the base the setting expects (``torch.nn.Module`` for models, a trainer for trainers, ART's ``EvasionAttack`` for
attacks, ...), and functions only when they are registered with :func:`register` or defined in ``art_latent``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Mapping
from typing import Any

from art_latent.registries.trainers import trainer_entries, trainer_parameters

logger = logging.getLogger(__name__)

__all__ = ["TRAINER_PACKAGES", "build_attack", "check_kwarg_values", "check_trainer_kwargs", "object_bases",
           "register", "registered", "resolve_attack", "resolve_class", "resolve_function", "resolve_kwargs",
           "resolve_object", "resolve_trainer", "trainer_parameters"]

TRAINER_PACKAGES = ("art_latent.trainers", "art_latent.defences")
#: Fill-ins for objects built from ``{object = ...}`` specifications, when their constructor takes them.
CONTEXT_KEYS = ("in_channels", "clip_values", "device_type")
_PER_255 = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*255\s*$")


_REGISTERED: dict[str, Any] = {}


def register(obj: Any = None, *, name: str | None = None) -> Any:
    """
    Allow a function (or class) to be named in configurations, under ``"package.module:name"`` and, when given,
    under `name`. Usable as a decorator: ``@register`` or ``@register(name="my_metric")``.

    :param obj: The function or class.
    :param name: An extra short name.
    :return: `obj` (or the decorator).
    """
    def add(target: Any) -> Any:
        _REGISTERED[f"{target.__module__}:{target.__qualname__}"] = target
        if name is not None:
            _REGISTERED[name] = target
        return target

    return add if obj is None else add(obj)


def registered() -> dict[str, Any]:
    """The objects registered with :func:`register`, by name (a copy)."""
    return dict(_REGISTERED)


def _import_path(path: str) -> Any:
    if ":" not in path:
        raise ValueError(f"{path!r} is not of the form 'package.module:attribute'.")
    module_name, _, attribute = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        if part.startswith("_"):
            raise ValueError(f"{path!r} names a private attribute ({part!r}); configurations may not.")
        obj = getattr(obj, part)
        if inspect.ismodule(obj):  # "art_latent.io:os.system" would reach any module through an import
            raise ValueError(f"{path!r} reaches the module {obj.__name__!r} through an attribute; name the object "
                             "by its own module.")
    return obj


def resolve_object(path: str, base: type | tuple[type, ...]) -> type:
    """
    Import the class at ``"package.module:Class"`` (nested attributes with dots) when it derives from `base`, or
    return the object registered under `path` (see :func:`register`).

    :param path: The path.
    :param base: The base class(es) the class must derive from: nothing else is returned, so a configuration cannot
                 reach a function such as ``os:system``.
    :return: The class.
    :raises ValueError: If `path` has no ``:``, names a private attribute, or is not such a class.
    :raises ImportError: If the module cannot be imported.
    :raises AttributeError: If the attribute does not exist.
    """
    if path in _REGISTERED:
        return _REGISTERED[path]
    obj = _import_path(path)
    bases = base if isinstance(base, tuple) else (base,)
    if not (isinstance(obj, type) and issubclass(obj, bases)):
        names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        raise ValueError(f"{path!r} is not a subclass of {names}: a configuration may only name such classes "
                         "(or objects registered with art_latent.experiments.registry.register).")
    return obj


def resolve_function(path: str) -> Any:
    """
    The function at ``"package.module:function"`` when it is registered with :func:`register` or defined in
    ``art_latent``; any other callable is refused (a configuration must not call ``os:system``).

    :param path: The path.
    :return: The function.
    :raises ValueError: If it is neither.
    """
    if path in _REGISTERED:
        return _REGISTERED[path]
    module_name = path.partition(":")[0]
    if module_name != "art_latent" and not module_name.startswith("art_latent."):
        raise ValueError(f"{path!r} is not registered: functions named in a configuration must be registered with "
                         "art_latent.experiments.registry.register (or defined in art_latent).")
    obj = _import_path(path)
    defined_in = getattr(obj, "__module__", "") or ""
    if not inspect.isfunction(obj) or not (defined_in == "art_latent" or defined_in.startswith("art_latent.")):
        raise ValueError(f"{path!r} is not a function defined in art_latent: functions named in a configuration must "
                         "be registered with art_latent.experiments.registry.register.")
    return obj


def object_bases() -> tuple[type, ...]:
    """
    The base classes a ``{object = "package.module:Class"}`` table may instantiate: torch modules, art_latent
    perturbation sources, ART attacks and estimators, and trainers.
    """
    import torch
    from art.attacks.attack import Attack
    from art.defences.trainer.trainer import Trainer

    from art_latent.perturbations import PerturbationSource

    return (torch.nn.Module, PerturbationSource, Attack, Trainer)


def _is_trainer(obj: Any) -> bool:
    return isinstance(obj, type) and callable(getattr(obj, "fit", None))


def _trainer_bases() -> tuple[type, ...]:
    from art.defences.trainer.trainer import Trainer

    return (Trainer,)


def resolve_class(name: str, what: str = "class", accept: Any = None, bases: tuple[type, ...] | None = None) -> type:
    """
    Find a class by name: ``getattr`` on ``art_latent.trainers``, then ``art_latent.defences``; or import
    ``"package.module:Class"``.

    :param name: The class name or path.
    :param what: What is looked for, for messages.
    :param accept: Predicate the class must satisfy (default: any class).
    :param bases: What a ``"package.module:Class"`` path must derive from (default: :func:`object_bases`).
    :return: The class.
    :raises ValueError: If no such class exists.
    """
    accept = accept or (lambda obj: isinstance(obj, type))
    obj: Any  # whatever `accept` approves is returned
    if ":" in name:
        try:
            obj = resolve_object(name, bases if bases is not None else object_bases())
        except (ImportError, AttributeError) as error:
            raise ValueError(f"Cannot import {what} {name!r}: {error}") from error
        if not accept(obj):
            raise ValueError(f"{name!r} is not a {what}.")
        return obj
    searched = []
    for package_name in TRAINER_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ImportError:
            continue
        searched.append(package_name)
        obj = getattr(package, name, None)
        if accept(obj):
            return obj
    raise ValueError(f"Unknown {what} {name!r}: not found in {', '.join(searched)}; give a class name such as "
                     "'FeatureGuidedDenoiser' or a path 'package.module:Class'.")


def resolve_trainer(name: str) -> type:
    """
    Find a trainer class by name in :mod:`art_latent.registries.trainers`, or by path.

    :param name: A registered class name (``"HLDRTrainer"``) or ``"package.module:Class"``.
    :return: The class (anything with a ``fit`` method; given as a path, an ART ``Trainer`` subclass).
    :raises ValueError: If no such trainer exists.
    """
    what = "trainer class (a class with a `fit` method)"
    if ":" in name:
        return resolve_class(name, what, _is_trainer, _trainer_bases())
    entries = trainer_entries()
    if name not in entries:
        raise ValueError(f"Unknown {what} {name!r}: registered trainers are {sorted(entries)} (see "
                         "art_latent.registries.trainers); or give a path 'package.module:Class'.")
    return entries[name].load()


def _is_object_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and "object" in value


def check_kwarg_values(kwargs: Mapping[str, Any]) -> None:
    """
    Check the values of a trainer's keyword arguments before any work: every ``{object = "Class", kwargs = {...}}``
    specification must name an existing class and have no other keys.

    :param kwargs: The keyword arguments from the configuration.
    :raises ValueError: Naming the offending argument.
    """
    for key, value in kwargs.items():
        if _is_object_spec(value):
            unknown = sorted(set(value) - {"object", "kwargs"})
            if unknown:
                raise ValueError(f"`{key}`: an object specification takes the keys 'object' and 'kwargs', "
                                 f"not {unknown}.")
            if not isinstance(value.get("kwargs", {}), Mapping):
                raise ValueError(f"`{key}.kwargs` must be a table.")
            try:
                resolve_class(str(value["object"]))
            except ValueError as error:
                raise ValueError(f"`{key}`: {error}") from error
            check_kwarg_values(value.get("kwargs", {}))


def resolve_kwargs(kwargs: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """
    Turn configuration values into constructor arguments: strings ``"N/255"`` become ``N / 255``, and tables
    ``{object = "Class", kwargs = {...}}`` become ``Class(**kwargs)`` (the class looked up as trainers are; its
    ``in_channels``, ``clip_values`` and ``device_type`` filled from `context` when it takes them and they are not
    given), recursively.

    :param kwargs: The configuration's keyword arguments.
    :param context: Values for ``in_channels``, ``clip_values``, ``device_type``.
    :return: The arguments.
    """
    context = dict(context or {})

    def convert(value: Any) -> Any:
        if isinstance(value, str) and (match := _PER_255.match(value)):
            return float(match.group(1)) / 255.0
        if _is_object_spec(value):
            cls = resolve_class(str(value["object"]))
            args = resolve_kwargs(value.get("kwargs", {}), context)
            accepted = inspect.signature(cls).parameters
            for key in CONTEXT_KEYS:
                if key in accepted and key not in args and key in context:
                    args[key] = context[key]
            return cls(**args)
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {key: convert(value) for key, value in kwargs.items()}


def resolve_attack(name: str) -> type:
    """
    Find an ART evasion attack class: a name in ``art.attacks.evasion`` or ``"package.module:Class"``.

    :param name: The name.
    :return: The class.
    :raises ValueError: If it is not an ART ``EvasionAttack`` subclass.
    """
    from art.attacks.attack import EvasionAttack

    obj: Any
    if ":" in name:
        try:
            obj = resolve_object(name, EvasionAttack)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"Cannot import attack {name!r}: {error}") from error
    else:
        import art.attacks.evasion

        obj = getattr(art.attacks.evasion, name, None)
    if not (isinstance(obj, type) and issubclass(obj, EvasionAttack)):
        raise ValueError(f"{name!r} is not an ART evasion attack (e.g. 'FastGradientMethod', "
                         "'ProjectedGradientDescent', or 'package.module:Class').")
    return obj


def check_trainer_kwargs(cls: type, kwargs: Mapping[str, Any]) -> None:
    """
    Check that `cls` accepts every key of `kwargs` (before any work).

    :param cls: The trainer class.
    :param kwargs: Keyword arguments from the configuration.
    :raises TypeError: Naming the unknown keys and the accepted ones.
    """
    params, any_keyword = trainer_parameters(cls)
    if any_keyword:
        return
    first = next(iter(params), None)  # the classifier, given by the protocol
    unknown = sorted(set(kwargs) - set(params))
    if first is not None and first in kwargs:
        unknown.append(first)
    if unknown:
        accepted = [k for k in params if k != first]
        raise TypeError(f"{cls.__name__} does not accept {unknown}; accepted keyword arguments: {accepted}.")


def build_attack(spec: Any, classifier: Any, batch_size: int = 256) -> Any:
    """
    Build the ART attack of an :class:`~art_latent.experiments.specs.AttackSpec` on `classifier`.

    :param spec: The attack specification (``name``, ``eps_255``, ``eps_step_255``, ``kwargs``).
    :param classifier: The estimator to attack.
    :param batch_size: The attack's ``batch_size`` unless its ``kwargs`` set one.
    :return: The attack.
    """
    cls: type[Any] = resolve_attack(spec.name)
    kwargs = dict(spec.kwargs)
    accepted = inspect.signature(cls.__init__).parameters
    if "eps" in accepted:
        kwargs.setdefault("eps", spec.eps_255 / 255.0)
    if spec.eps_step_255 is not None:
        kwargs.setdefault("eps_step", spec.eps_step_255 / 255.0)
    if "batch_size" in accepted:
        kwargs.setdefault("batch_size", batch_size)
    if "verbose" in accepted:
        kwargs.setdefault("verbose", False)
    return cls(classifier, **kwargs)
