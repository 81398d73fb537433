"""
:class:`RobustnessReport`: evaluate one or more (defended) classifiers against an attack suite and write the
results as JSON, a Markdown table and PNG plots, with a gradient-masking check.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from art_latent.analysis import report_render
from art_latent.analysis.curves import (
    accuracy_under_perturbation,
    accuracy_vs_noise,
    classifier_inputs,
    perturbation_error,
    predict_labels,
)
from art_latent.analysis.masking import gradient_masking_flags
from art_latent.analysis.masking import masking_checks as run_masking_checks
from art_latent.analysis.plotting import plot_curves
from art_latent.attacks.autoattack import MULTIPROCESS_MESSAGE, PRESETS
from art_latent.io import atomic_write, json_safe, write_json
from art_latent.registries.evaluation_attacks import attack_names, attack_titles, evaluation_attack
from art_latent.validation import check_budget_units, check_choice, check_int, check_range

logger = logging.getLogger(__name__)

__all__ = ["ATTACKS", "EPS_ATTACKS", "RobustnessReport", "gradient_masking_flags", "plot_curves", "write_json"]

#: The default suite: the built-in attacks of the registry :mod:`~art_latent.registries.evaluation_attacks` (an
#: attack registered there runs when named in ``attacks``).
ATTACKS = ("fgsm", "pgd", "transfer", "noise", "autoattack", "latent")
#: The built-in attacks evaluated over the eps list (``"noise"`` runs over the sigma list instead).
EPS_ATTACKS = attack_names("eps")
#: ``{name: title}`` of the built-in attacks.
ATTACK_TITLES = attack_titles()


class RobustnessReport:
    r"""
    Evaluate classifiers against an attack suite over lists of budgets, and write the results.

    The suite (all :math:`L_\infty`, untargeted, with the true labels):

    * ``"fgsm"``: ART's ``FastGradientMethod``, white-box;
    * ``"pgd"``: ART's ``ProjectedGradientDescent`` with ``pgd_max_iter`` steps of ``pgd_step_ratio * eps`` and
      ``pgd_restarts`` random starts (a sample counts as broken when any start breaks it), white-box;
    * ``"transfer"``: adversarial examples made by ``transfer_attack`` (PGD or FGSM) on the *reference*
      (undefended) model, shown to every model;
    * ``"noise"``: additive Gaussian noise over `sigma_list`;
    * ``"autoattack"``: AutoAttack's ensemble (:class:`~art_latent.attacks.autoattack.AutoAttackEnsemble`:
      ``"standard"`` = APGD-CE, APGD-T, Square; ``"fast"`` = APGD-CE, APGD-DLR), white-box;
    * ``"latent"``: the latent adaptive attack :class:`~art_latent.attacks.LatentPGD` on each classifier's
      ``regularized_layers`` (else its ``latent_layers``), PGD's steps and restarts, white-box.

    FGSM and PGD run on the on-device torch path of :class:`~art_latent.perturbations.TorchGradientAttack` (the same
    output as ART's ``generate``); every attack is generated and scored batch by batch on the classifier's device.
    Budget 0 is the clean accuracy. Each model also gets the per-layer perturbation error (paper 000, Fig. 6) at
    `perturbation_eps` with FGSM, and every function in `extra_metrics`.

    The **gradient-masking checks**: :func:`~art_latent.analysis.masking.gradient_masking_flags` reads the curves
    (white-box above transfer, accuracy not falling with eps, PGD above FGSM) and, with ``masking_checks=True``,
    :func:`~art_latent.analysis.masking.masking_checks` runs the checklist at `check_eps` (input gradients non-zero,
    PGD over the whole input range reaches ~0, more PGD steps/restarts do not raise accuracy, black-box Square does
    not beat white-box); every failed check is a flag.

    .. code-block:: python

        report = RobustnessReport(eps_list=[0, 4 / 255, 8 / 255, 16 / 255])
        results = report.evaluate({"undefended": clf0, "hldr": clf1}, x_test, y_test, reference="undefended")
        report.write(results, "report/")   # report.json, report.md, *.png
    """

    def __init__(
        self,
        attacks: Sequence[str] = ATTACKS,
        eps_list: Sequence[float] = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255),
        sigma_list: Sequence[float] = (0.0, 8 / 255, 16 / 255, 32 / 255, 64 / 255),
        pgd_max_iter: int = 10,
        pgd_step_ratio: float | None = None,
        pgd_restarts: int = 1,
        transfer_attack: str = "pgd",
        autoattack_preset: str = "standard",
        autoattack_kwargs: Mapping[str, Any] | None = None,
        latent_kwargs: Mapping[str, Any] | None = None,
        masking_checks: bool = True,
        check_eps: float | None = None,
        square_queries: int = 1000,
        check_samples: int = 200,
        perturbation_eps: float | None = 8 / 255,
        perturbation_layers: Any = None,
        extra_metrics: Mapping[str, Callable[..., Any]] | None = None,
        masking_tolerance: float = 0.01,
        batch_size: int = 256,
        seed: int = 0,
        scale: float = 255.0,
        verbose: bool = True,
    ) -> None:
        """
        :param attacks: Names of registered attacks (:mod:`~art_latent.registries.evaluation_attacks`; the built-in
                        ones are :data:`ATTACKS`).
        :param eps_list: Budgets (input units, e.g. ``8 / 255``), each >= 0; sorted ascending; 0 is the clean
                         accuracy.
        :param sigma_list: Standard deviations of the Gaussian noise, each >= 0.
        :param pgd_max_iter: PGD iterations.
        :param pgd_step_ratio: PGD step size as a fraction of eps (``eps_step = pgd_step_ratio * eps``); default
                               ``2.5 / pgd_max_iter`` (Madry et al.'s rule: the steps can cross the ball 2.5 times).
        :param pgd_restarts: PGD random starts (ART's ``num_random_init``; 0 starts at the input).
        :param transfer_attack: ``"pgd"`` or ``"fgsm"``: the attack run on the reference model for ``"transfer"``.
        :param autoattack_preset: ``"standard"`` or ``"fast"`` (see
                                  :class:`~art_latent.attacks.autoattack.AutoAttackEnsemble`).
        :param autoattack_kwargs: Extra keyword arguments of :class:`~art_latent.attacks.autoattack.AutoAttackEnsemble`
                                  (``max_iter``, ``targets``, ``square_queries``).
        :param latent_kwargs: Extra keyword arguments of :class:`~art_latent.attacks.LatentPGD` (``latent_weight``,
                              ``mode``, ``layers``, ...).
        :param masking_checks: Run :func:`~art_latent.analysis.masking.masking_checks` for every model.
        :param check_eps: Budget of the masking checks; default: the budget of `eps_list` closest to 8/255.
        :param square_queries: Query budget of the black-box Square attack of the masking checks.
        :param check_samples: Number of test samples the masking checks use.
        :param perturbation_eps: FGSM budget of the per-layer perturbation error; ``None`` skips it.
        :param perturbation_layers: Layers of the perturbation error (default: each classifier's ``latent_layers``).
        :param extra_metrics: ``{name: fn}``: more metrics per model, e.g. the representation and DeepFool metrics of
                              :mod:`art_latent.analysis`. Each ``fn`` is called with the arguments it names among
                              ``classifier`` (or ``estimator``), ``x`` and ``y`` (numpy test inputs and labels) and
                              ``x_adv`` (their FGSM examples at `perturbation_eps`); bind other arguments with
                              ``functools.partial``. It returns a number, or a dict whose numeric entries are kept
                              (arrays are dropped); stored under ``"extra"``.
        :param masking_tolerance: Slack of the gradient-masking check, in accuracy units.
        :param batch_size: Batch size of attacks and predictions.
        :param seed: Seed of the random starts and the noise (every model gets the same draws).
        :param scale: Display unit of budgets in tables and plots (255: eps printed in units of 1/255).
        :param verbose: Progress bars.
        :raises ValueError: On an unknown attack or a bad value.
        :raises ImportError: When ``"autoattack"`` is requested and ``multiprocess`` is not installed.
        """
        attacks = tuple(attacks)
        if not attacks:
            raise ValueError(f"`attacks` is empty; accepted names: {attack_names()}.")
        for name in attacks:
            check_choice("attacks", name, attack_names())
        if len(set(attacks)) != len(attacks):
            raise ValueError(f"`attacks` has duplicates: {attacks}.")
        if "autoattack" in attacks and importlib.util.find_spec("multiprocess") is None:
            raise ImportError(MULTIPROCESS_MESSAGE)
        self.autoattack_preset = check_choice("autoattack_preset", autoattack_preset, tuple(PRESETS))
        self.latent_kwargs = dict(latent_kwargs or {})
        self.masking_checks = bool(masking_checks)
        self.check_eps = None if check_eps is None else check_range("check_eps", check_eps, 0.0, math.inf,
                                                                     low_open=True, high_open=True)
        self.square_queries = check_int("square_queries", square_queries)
        self.check_samples = check_int("check_samples", check_samples)
        self.attacks = attacks
        self.eps_list = sorted(check_range("eps_list", e, 0.0, math.inf, high_open=True) for e in eps_list)
        if any(a in attack_names("eps") for a in attacks) and not self.eps_list:
            raise ValueError("`eps_list` is empty.")
        self.sigma_list = sorted(check_range("sigma_list", s, 0.0, math.inf, high_open=True) for s in sigma_list)
        if "noise" in attacks and not self.sigma_list:
            raise ValueError("`sigma_list` is empty but the suite has 'noise'.")
        self.pgd_max_iter = check_int("pgd_max_iter", pgd_max_iter)
        if pgd_step_ratio is None:
            pgd_step_ratio = 2.5 / self.pgd_max_iter
        self.pgd_step_ratio = check_range("pgd_step_ratio", pgd_step_ratio, 0.0, math.inf, low_open=True,
                                          high_open=True)
        self.pgd_restarts = check_int("pgd_restarts", pgd_restarts, minimum=0)
        self.transfer_attack = check_choice("transfer_attack", transfer_attack, ("pgd", "fgsm"))
        self.autoattack_kwargs = dict(autoattack_kwargs or {})
        self.perturbation_eps = (None if perturbation_eps is None else
                                 check_range("perturbation_eps", perturbation_eps, 0.0, math.inf, low_open=True,
                                             high_open=True))
        self.perturbation_layers = perturbation_layers
        self.extra_metrics = dict(extra_metrics or {})
        self._metric_args = {name: self._metric_arguments(name, fn) for name, fn in self.extra_metrics.items()}
        self.masking_tolerance = check_range("masking_tolerance", masking_tolerance, 0.0, 1.0)
        self.batch_size = check_int("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.scale = check_range("scale", scale, 0.0, math.inf, low_open=True, high_open=True)
        self.verbose = verbose

    def _metric_arguments(self, name: str, fn: Any) -> dict[str, str]:
        """Map the parameters of an extra metric to what the report provides; reject what it cannot provide."""
        if not callable(fn):
            raise TypeError(f"extra_metrics[{name!r}] must be callable, got {type(fn).__name__}.")
        provided = {"classifier": "classifier", "estimator": "classifier", "x": "x", "y": "y", "x_adv": "x_adv"}
        if self.perturbation_eps is None:
            provided.pop("x_adv")
        mapping = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if param.name in provided:
                mapping[param.name] = provided[param.name]
            elif param.default is inspect.Parameter.empty:
                raise ValueError(
                    f"extra_metrics[{name!r}] needs the argument {param.name!r}, which the report cannot provide "
                    f"(it provides {sorted(provided)}; x_adv needs perturbation_eps): bind it with functools.partial."
                )
        return mapping

    # ------------------------------------------------------------------ attacks

    def settings(self) -> dict[str, Any]:
        """The report's settings, as stored in the JSON."""
        return {
            "attacks": list(self.attacks), "eps": self.eps_list, "sigmas": self.sigma_list,
            "pgd_max_iter": self.pgd_max_iter, "pgd_step_ratio": self.pgd_step_ratio,
            "pgd_restarts": self.pgd_restarts, "transfer_attack": self.transfer_attack,
            "perturbation_eps": self.perturbation_eps, "masking_tolerance": self.masking_tolerance,
            "seed": self.seed, "scale": self.scale,
            "autoattack_preset": self.autoattack_preset,
            "autoattack_kwargs": {k: repr(v) for k, v in self.autoattack_kwargs.items()},
            "latent_kwargs": {k: repr(v) for k, v in self.latent_kwargs.items()},
            "masking_checks": self.masking_checks, "check_eps": self.masking_eps(),
            "square_queries": self.square_queries, "check_samples": self.check_samples,
        }

    def masking_eps(self) -> float | None:
        """The budget of the masking checks: `check_eps`, else the positive budget of `eps_list` closest to 8/255."""
        if self.check_eps is not None:
            return self.check_eps
        positive = [e for e in self.eps_list if e > 0]
        return min(positive, key=lambda e: abs(e - 8 / 255)) if positive else None

    def make_source(self, name: str, classifier: Any, offset: int = 0) -> Any:
        """
        The perturbation source of a white-box attack on `classifier`, with the report's settings (the budget is
        set per call with ``eps=``).

        :param name: A registered attack with a builder (``"fgsm"``, ``"pgd"``, ``"autoattack"``, ``"latent"``, ...).
        :param classifier: The attacked classifier.
        :param offset: Added to the seed of the random starts.
        :return: A :class:`~art_latent.perturbations.PerturbationSource`.
        """
        build = evaluation_attack(name).build
        if build is None:
            raise ValueError(f"{name!r} is not an attack built per classifier (the transfer attack and the noise are "
                             "run by the report itself).")
        reference_eps = max(self.eps_list[-1], 1e-3)  # overridden per budget; sets the step/eps ratio
        return build(self, classifier, reference_eps, torch.Generator().manual_seed(self.seed + offset))

    def transfer_examples(self, source_classifier: Any, x: Any, y: Any) -> dict[float, torch.Tensor]:
        """
        Adversarial examples of `x` made on `source_classifier` (the reference) at every positive budget, for the
        transfer attack; computed once and shown to every model.

        :param source_classifier: The classifier the examples are made on.
        :param x: Clean inputs.
        :param y: True labels.
        :return: ``{eps: adversarial inputs}`` on the source classifier's device.
        """
        x_t, y_t = classifier_inputs(source_classifier, x, y)
        source = self.make_source(self.transfer_attack, source_classifier, offset=1)
        out: dict[float, torch.Tensor] = {}
        budgets = [e for e in self.eps_list if e > 0]
        for eps in tqdm(budgets, desc="transfer examples", disable=not self.verbose, leave=False):
            parts = [source.generate(x_t[b : b + self.batch_size], y_t[b : b + self.batch_size], eps=eps)
                     for b in range(0, len(x_t), self.batch_size)]
            out[eps] = torch.cat(parts)
        return out

    # ------------------------------------------------------------------ evaluation

    def _check_units(self, classifier: Any) -> None:
        clip = getattr(classifier, "clip_values", None)
        check_budget_units("eps_list", list(self.eps_list), clip)
        if self.check_eps is not None:
            check_budget_units("check_eps", self.check_eps, clip)

    def evaluate_model(
        self,
        classifier: Any,
        x: Any,
        y: Any,
        transfer: Mapping[float, torch.Tensor] | None = None,
        is_reference: bool = False,
        name: str = "model",
    ) -> dict[str, Any]:
        """
        Evaluate one classifier.

        :param classifier: An ART ``PyTorchClassifier`` (a :class:`~art_latent.estimator.LatentClassifier` for the
                           perturbation error; a plain one is wrapped).
        :param x: Clean inputs.
        :param y: True labels.
        :param transfer: The output of :meth:`transfer_examples` (required when the suite has ``"transfer"``).
        :param is_reference: `classifier` is the transfer source (its transfer curve is its own white-box curve, so
                             the masking check skips that comparison).
        :param name: Name used in progress bars and logs.
        :return: ``{"clean_accuracy", "accuracy": {attack: [per eps]}, "noise_accuracy": [per sigma],
                 "perturbation_error": {"layers", "values"}, "extra", "flags", "timing": {"eval_seconds"}}``.
        """
        started = time.perf_counter()
        self._check_units(classifier)
        x_t, y_t = classifier_inputs(classifier, x, y)
        if "transfer" in self.attacks and transfer is None:
            raise ValueError("The suite has 'transfer': pass the reference's `transfer_examples`.")
        clean = (predict_labels(classifier, x_t, self.batch_size) == y_t).double().mean().item()
        result: dict[str, Any] = {"clean_accuracy": clean, "accuracy": {}}
        for offset, attack in enumerate(a for a in self.attacks if evaluation_attack(a).axis == "eps"):
            curve = []
            source = None if attack == "transfer" else self.make_source(attack, classifier, offset=10 + offset)
            for eps in tqdm(self.eps_list, desc=f"{name}: {attack}", disable=not self.verbose, leave=False):
                if eps == 0:
                    curve.append(clean)
                elif attack == "transfer":
                    assert transfer is not None  # checked above
                    x_adv = transfer[eps].to(classifier.device)
                    curve.append(accuracy_under_perturbation(classifier, x_adv, y_t, batch_size=self.batch_size))
                else:
                    curve.append(accuracy_under_perturbation(classifier, x_t, y_t, source, eps=eps,
                                                             batch_size=self.batch_size))
            result["accuracy"][attack] = curve
        if "noise" in self.attacks:
            result["noise_accuracy"] = accuracy_vs_noise(classifier, x_t, y_t, self.sigma_list, self.batch_size,
                                                         seed=self.seed, verbose=False)
        if len(self.eps_list) > 1:
            result["auc"] = {a: _normalized_auc(self.eps_list, c) for a, c in result["accuracy"].items()}
        if self.perturbation_eps is not None:
            fgsm = self.make_source("fgsm", classifier)
            x_adv = torch.cat([fgsm.generate(x_t[b : b + self.batch_size], y_t[b : b + self.batch_size],
                                             eps=self.perturbation_eps) for b in range(0, len(x_t), self.batch_size)])
            errors = perturbation_error(classifier, x_t, x_adv, self.perturbation_layers, self.batch_size)
            result["perturbation_error"] = {"layers": list(errors), "values": list(errors.values())}
        if self.extra_metrics:
            available = {"classifier": classifier, "x": x_t.cpu().numpy(), "y": y_t.cpu().numpy()}
            if self.perturbation_eps is not None:
                available["x_adv"] = x_adv.cpu().numpy()
            result["extra"] = {}
            for key, fn in self.extra_metrics.items():
                value = fn(**{param: available[what] for param, what in self._metric_args[key].items()})
                result["extra"].update(_flatten_metric(key, value))
        result["flags"] = gradient_masking_flags(result["accuracy"], self.eps_list, self.masking_tolerance,
                                                 check_transfer=not is_reference, scale=self.scale)
        check_eps = self.masking_eps()
        if self.masking_checks and check_eps is not None:
            at = {a: c[self.eps_list.index(check_eps)] for a, c in result["accuracy"].items()
                  if check_eps in self.eps_list}
            white = [v for a, v in at.items() if evaluation_attack(a).white_box and v is not None]
            checks = run_masking_checks(
                classifier, x_t, y_t, check_eps, white_box_accuracy=min(white) if white else None,
                pgd_accuracy=at.get("pgd"), pgd_max_iter=self.pgd_max_iter, tolerance=self.masking_tolerance,
                square_queries=self.square_queries, samples=self.check_samples, batch_size=self.batch_size,
                seed=self.seed + 100)
            result["masking_checks"] = checks
            result["flags"] += [f"{check} check failed: {c['detail']}"
                                for check, c in checks.items() if not c["passed"]]
        for flag in result["flags"]:
            logger.warning("Possible gradient masking in %s: %s.", name, flag)
        result["timing"] = {"eval_seconds": time.perf_counter() - started}
        return result

    def evaluate(
        self,
        classifiers: Mapping[str, Any] | Any,
        x: Any,
        y: Any,
        reference: str | None = None,
    ) -> dict[str, Any]:
        """
        Evaluate every classifier on ``(x, y)``.

        :param classifiers: ``{name: classifier}`` (or one classifier, named ``"model"``).
        :param x: Clean test inputs (numpy or tensor).
        :param y: True labels (indices or one-hot).
        :param reference: Name of the undefended model: the source of the transfer attack and the baseline of the
                          gains. Default: ``"undefended"`` when present, else none (then the suite may not have
                          ``"transfer"``).
        :return: The results: ``{"settings", "reference", "nb_samples", "models": {name: evaluate_model(...)}}``.
        """
        if not isinstance(classifiers, Mapping):
            classifiers = {"model": classifiers}
        if not classifiers:
            raise ValueError("`classifiers` is empty.")
        if reference is None and "undefended" in classifiers:
            reference = "undefended"
        if reference is not None and reference not in classifiers:
            raise ValueError(f"`reference` {reference!r} is not one of the classifiers {list(classifiers)}.")
        if "transfer" in self.attacks and reference is None:
            raise ValueError("The suite has 'transfer' but there is no reference model: pass `reference=` (the name "
                             "of the undefended classifier) or drop 'transfer' from `attacks`.")
        for clf in classifiers.values():
            classifier_inputs(clf, x[:1], y[:1])
            self._check_units(clf)
        transfer = None
        if "transfer" in self.attacks:
            assert reference is not None  # checked above: 'transfer' needs a reference model
            transfer = self.transfer_examples(classifiers[reference], x, y)
        models = {}
        for name, clf in tqdm(classifiers.items(), desc="models", disable=not self.verbose):
            models[name] = self.evaluate_model(clf, x, y, transfer, is_reference=name == reference, name=name)
        return {"settings": self.settings(), "reference": reference, "nb_samples": len(y), "models": models}

    # ------------------------------------------------------------------ output

    @staticmethod
    def gains(results: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
        """
        Accuracy gain of every model over the reference, per attack and budget (and ``"noise"`` per sigma).

        :param results: What :meth:`evaluate` returns.
        :return: ``{model: {attack: [gain per budget]}}``; empty without a reference.
        """
        return report_render.gains(results)

    @classmethod
    def to_markdown(cls, results: Mapping[str, Any]) -> str:
        """
        Markdown tables of the results: accuracy per attack and budget, gains over the reference, noise accuracy,
        perturbation error, and the gradient-masking findings.

        :param results: What :meth:`evaluate` returns (or the JSON it was saved as).
        :return: The Markdown text.
        """
        return report_render.to_markdown(results)

    @classmethod
    def plot(cls, results: Mapping[str, Any], out: str | os.PathLike) -> list[Path]:
        """
        Write the PNG plots: accuracy vs eps (one panel per attack), gain over the reference, accuracy vs sigma and
        per-layer perturbation error.

        :param results: What :meth:`evaluate` returns.
        :param out: Output directory.
        :return: The written paths.
        """
        return report_render.plot(results, out)

    @classmethod
    def write(cls, results: Mapping[str, Any], out: str | os.PathLike) -> list[Path]:
        """
        Write ``report.json``, ``report.md`` (with the plots linked) and the PNG plots to `out`.

        :param results: What :meth:`evaluate` returns.
        :param out: Output directory.
        :return: The written paths.
        """
        out = Path(out)
        paths = [write_json(results, out / "report.json")]
        plots = cls.plot(results, out)
        text = cls.to_markdown(results) + "\n## Plots\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in plots)
        md = atomic_write(out / "report.md", text + "\n")
        return [*paths, md, *plots]

    @classmethod
    def render(cls, out: str | os.PathLike) -> list[Path]:
        """
        Re-render ``report.md`` and the plots from a saved ``report.json``.

        :param out: The directory :meth:`write` wrote to.
        :return: The written paths.
        """
        results = json.loads((Path(out) / "report.json").read_text())
        return cls.write(results, out)


def _normalized_auc(eps: Sequence[float], curve: Sequence[float]) -> float:
    """Area under accuracy vs eps divided by the eps range (paper 001's AUC: 1 for accuracy 1 everywhere)."""
    from scipy.integrate import trapezoid

    return float(trapezoid(curve, eps) / (eps[-1] - eps[0])) if eps[-1] > eps[0] else float(curve[0])


def _flatten_metric(name: str, value: Any) -> dict[str, Any]:
    """Keep the numbers of a metric's result: a number as ``name``, a dict's numeric entries as ``name.key``."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            out.update(_flatten_metric(f"{name}.{key}", item))
        return out
    if isinstance(value, (bool, np.bool_)):
        return {name: bool(value)}
    if isinstance(value, (int, float, np.integer, np.floating)):
        return {name: json_safe(value)}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return {name: json_safe(value.item())}
    logger.debug("Dropping the non-scalar entry %s of an extra metric.", name)
    return {}


