"""
The k-fold fine-tuning protocol of paper 000 (Schwartz & Ditzler, IJCNN 2021, §IV), driven by an
:class:`~art_latent.experiments.config.ExperimentConfig`:

1. pool the data set (training and test parts), pre-train the model on a random stratified subset (which is then
   discarded), with optional early stopping on a held-out part of it;
2. split the rest into ``folds`` stratified folds (``sklearn.model_selection.StratifiedKFold``);
3. per fold, draw ``finetune_samples`` benign samples from the fold's training part, fine-tune every defense from the
   *same* pre-trained weights on the pair set ``D`` (and ``D_N``), and evaluate it on the fold's test part with
   :class:`~art_latent.analysis.report.RobustnessReport`;
4. write each fold's results to ``folds/fold_XX.json`` atomically; an interrupted run resumes after the last
   finished fold.

Every random choice is seeded from the configuration, per fold, so a resumed run produces the same numbers as an
uninterrupted one (on CPU; timings aside).

This module runs the folds (:func:`run_benchmark`, :func:`run_fold`, :func:`run_job`); the data and its splits are
in :mod:`art_latent.experiments.pool`, the model and its pre-training in :mod:`art_latent.experiments.pretraining`
(their names are importable from here too, as before).
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from art_latent.experiments.config import ExperimentConfig
from art_latent.experiments.paths import FOLD_DIR, fold_path
from art_latent.experiments.pool import Pool, Splits, fold_data, fold_seed, load_pool, make_splits, seed_everything
from art_latent.experiments.pretraining import PRETRAINED, make_classifier, new_model, pretrain
from art_latent.experiments.registry import (
    build_attack,
    resolve_function,
    resolve_kwargs,
    resolve_trainer,
)
from art_latent.io import write_json
from art_latent.registries.trainers import trainer_entry_for

logger = logging.getLogger(__name__)

__all__ = ["Pool", "Splits", "fold_data", "fold_path", "load_pool", "make_classifier", "make_splits", "new_model",
           "pretrain", "run_benchmark", "run_fold"]


def _order_jobs(config: ExperimentConfig) -> list[tuple[str, Any]]:
    """Every (pair set, defense) job, the reference first (its model is the transfer attack's source)."""
    jobs = [(p, d) for p in config.protocol.pair_sets for d in config.defenses if p in config.pair_sets_of(d)]
    reference = config.evaluation.reference
    first = next(i for i, (_, d) in enumerate(jobs) if d.name == reference)
    return [jobs[first]] + jobs[:first] + jobs[first + 1 :]


def make_report(config: ExperimentConfig, seed: int, verbose: bool = False) -> Any:
    """
    The :class:`~art_latent.analysis.report.RobustnessReport` of ``[evaluation]``.

    :param config: The configuration.
    :param seed: Seed of the random starts and noise.
    :param verbose: Progress bars.
    :return: The report.
    """
    from art_latent.analysis.report import RobustnessReport

    ev = config.evaluation
    extra = {}
    for metric in ev.extra_metrics:
        fn, kwargs = resolve_function(metric.function), dict(metric.kwargs)
        extra[metric.name] = (lambda f, kw: lambda clf, x, y: f(clf, x, y, **kw))(fn, kwargs)
    return RobustnessReport(
        attacks=ev.attacks, eps_list=[e / 255 for e in ev.eps_255], sigma_list=[s / 255 for s in ev.sigmas_255],
        pgd_max_iter=ev.pgd_max_iter, pgd_step_ratio=ev.pgd_step_ratio, pgd_restarts=ev.pgd_restarts,
        transfer_attack=ev.transfer_attack, autoattack_kwargs=ev.autoattack_kwargs,
        autoattack_preset=ev.autoattack_preset, masking_checks=ev.masking_checks,
        perturbation_eps=ev.perturbation_eps_255 / 255 if ev.perturbation_eps_255 > 0 else None,
        extra_metrics=extra, masking_tolerance=ev.masking_tolerance, batch_size=ev.batch_size, seed=seed,
        scale=255.0, verbose=verbose,
    )


def _describe_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            out[key] = list(value)
        else:
            out[key] = type(value).__name__
    return out


def run_job(
    config: ExperimentConfig,
    defense: Any,
    pair_set: str,
    pool: Pool,
    pretrained: dict[str, Any],
    data: dict[str, np.ndarray],
    seed: int,
    verbose: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """
    Fine-tune one defense on one pair set from the pre-trained weights.

    How the pair set reaches the trainer follows its declared
    :class:`~art_latent.registries.trainers.ProtocolContract` (:mod:`art_latent.registries.trainers`): a trainer whose
    contract has ``budgets`` builds its pairs itself and gets the protocol's budgets (and ``noise_sigma`` for ``D_N``
    when the contract has it) with the benign samples; any other trainer gets the members of the pairs it can use:
    the benign sample of every adversarial pair (so each sample ``len(budgets)`` times, the same number of steps per
    epoch) and, for ``D_N``, the noisy sample of every noise pair. A contract with ``attack`` gets the ART attack of
    ``[attack]`` (or the defense's own), built on the model being fine-tuned; one with ``seed`` gets the fold's seed.
    Keyword arguments in the configuration take precedence.

    :param config: The configuration.
    :param defense: The :class:`~art_latent.experiments.specs.DefenseSpec`.
    :param pair_set: ``"D"`` or ``"D_N"``.
    :param pool: The pool.
    :param pretrained: The pre-trained ``state_dict``.
    :param data: :func:`fold_data`'s output.
    :param seed: The fold's seed.
    :param verbose: Progress bars.
    :return: ``(the defended classifier, training record)``.
    """
    cls = resolve_trainer(defense.trainer)
    seed_everything(seed)
    model = new_model(config, pool)
    model.load_state_dict(pretrained)
    clf = make_classifier(config, model, pool)
    contract = trainer_entry_for(cls).contract
    kwargs = resolve_kwargs(defense.kwargs, {"in_channels": pool.input_shape[0], "clip_values": (0.0, 1.0),
                                             "device_type": config.device})
    budgets = [b / 255 for b in config.protocol.budgets_255]
    x, y = data["x_ft"], data["y_ft"]
    if contract.budgets:
        kwargs.setdefault("budgets", budgets)
        pairs = 1 if kwargs["budgets"] is None else len(kwargs["budgets"])  # None: the attack's own eps
    else:
        x, y = np.concatenate([x] * len(budgets)), np.concatenate([y] * len(budgets))
        pairs = len(budgets)
    if pair_set == "D_N":
        pairs += 1
        if contract.noise_sigma:
            kwargs.setdefault("noise_sigma", config.protocol.noise_sigma_255 / 255)
        else:
            x, y = np.concatenate([x, data["x_noisy"]]), np.concatenate([y, data["y_ft"]])
    if contract.attack and "attack" not in kwargs:
        kwargs["attack"] = build_attack(defense.attack or config.attack, clf, config.evaluation.batch_size)
    if contract.seed:
        kwargs.setdefault("seed", seed)
    trainer = cls(clf, **kwargs)
    fit_params = inspect.signature(trainer.fit).parameters
    fit_kwargs: dict[str, Any] = {"batch_size": config.protocol.batch_size,
                                  "nb_epochs": defense.epochs or config.protocol.epochs}
    if "verbose" in fit_params:
        fit_kwargs["verbose"] = verbose
    started = time.perf_counter()
    trainer.fit(x, y, **fit_kwargs)
    seconds = time.perf_counter() - started
    nb_pairs = len(data["y_ft"]) * pairs
    history = getattr(trainer, "history", None) or []
    record = {
        "trainer": cls.__name__,
        "kwargs": _describe_kwargs(kwargs),
        "epochs": fit_kwargs["nb_epochs"],
        "train_size": len(y),
        "pairs": nb_pairs,
        "final": {k: v for k, v in history[-1].items() if k not in ("time_s", "lr")} if history else {},
        "fit_seconds": seconds,
        "ms_per_sample": 1000.0 * seconds / (fit_kwargs["nb_epochs"] * nb_pairs),
    }
    get = getattr(trainer, "get_classifier", None)
    return (get() if callable(get) else clf), record


def run_fold(
    config: ExperimentConfig, fold: int, pool: Pool, splits: Splits, pretrained: dict[str, Any], verbose: bool = True
) -> dict[str, Any]:
    """
    Run one fold: fine-tune every (pair set, defense) job from the pre-trained weights and evaluate it on the fold's
    test part.

    :param config: The configuration.
    :param fold: Fold index.
    :param pool: The pool.
    :param splits: The splits.
    :param pretrained: The pre-trained ``state_dict``.
    :param verbose: Progress bars.
    :return: The fold's results (what ``folds/fold_XX.json`` holds).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    seed = fold_seed(config, fold)
    data = fold_data(config, pool, splits, fold)
    report = make_report(config, seed, verbose)
    reference = config.evaluation.reference
    transfer = None
    results: dict[str, dict[str, Any]] = {p: {} for p in config.protocol.pair_sets}
    jobs = _order_jobs(config)
    for pair_set, defense in tqdm(jobs, desc=f"fold {fold + 1}", disable=not verbose, unit="defense"):
        logger.info("Fold %d: fine-tuning %s on %s.", fold + 1, defense.name, pair_set)
        clf, record = run_job(config, defense, pair_set, pool, pretrained, data, seed, verbose=verbose)
        is_reference = defense.name == reference and transfer is None
        if is_reference and "transfer" in report.attacks:
            transfer = report.transfer_examples(clf, data["x_test"], data["y_test"])
        seed_everything(seed)
        evaluation = report.evaluate_model(clf, data["x_test"], data["y_test"], transfer,
                                           is_reference=defense.name == reference, name=defense.name)
        timing = evaluation.pop("timing")
        timing.update(fit_seconds=record.pop("fit_seconds"), ms_per_sample=record.pop("ms_per_sample"))
        results[pair_set][defense.name] = {**evaluation, "training": record, "timing": timing}
    return {
        "fold": fold,
        "seed": seed,
        "config_digest": config.digest(),
        "sizes": {"finetune": len(data["y_ft"]), "test": len(data["y_test"]), "pretrain": len(splits.pretrain)},
        "results": results,
        "timing": {"fold_seconds": time.perf_counter() - started},
    }


def _finished(out: Path, fold: int, digest: str) -> bool:
    path = fold_path(out, fold)
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is unreadable: running fold %d again.", path, fold + 1)
        return False
    if saved.get("config_digest") != digest:
        raise ValueError(
            f"{path} was computed with another configuration (digest {saved.get('config_digest')}, now {digest}): "
            "use a new output directory, or restart (`--restart`) to discard the finished folds."
        )
    return True


def run_benchmark(
    config: ExperimentConfig, out: str | Path, resume: bool = True, verbose: bool = True
) -> dict[str, Any]:
    """
    Run the protocol and write the results, figures and ``report.md`` to `out`.

    Layout of `out`: ``config.json`` (the resolved configuration and its digest), ``config.toml`` (a copy of the
    file), ``pretrained.pt``, ``folds/fold_XX.json`` (one per finished fold, written atomically), ``results.json``
    (means and confidence intervals), ``figures/*.png`` and ``report.md``.

    :param config: The configuration.
    :param out: Output directory.
    :param resume: Skip the folds already finished in `out` (they must come from the same configuration); with
                   `False` previous fold results and pre-trained weights in `out` are discarded.
    :param verbose: Progress bars and messages.
    :return: The aggregated results (what ``results.json`` holds).
    """
    from art_latent.experiments.summary import render_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digest = config.digest()
    if not resume:
        shutil.rmtree(out / FOLD_DIR, ignore_errors=True)
        (out / PRETRAINED).unlink(missing_ok=True)
        (out / (PRETRAINED + ".json")).unlink(missing_ok=True)
    nb_folds = config.nb_folds_to_run
    pending = [k for k in range(nb_folds) if not _finished(out, k, digest)]
    write_json({"config": config.to_dict(), "digest": digest}, out / "config.json")
    if config.source and Path(config.source).is_file():
        shutil.copyfile(config.source, out / "config.toml")
    if pending:
        started = time.perf_counter()
        pool = load_pool(config)
        splits = make_splits(config, pool.y)
        pretrained, info = pretrain(config, pool, splits, out, verbose)
        write_json({k: v for k, v in info.items()}, out / "pretrain.json")
        if verbose:
            done = nb_folds - len(pending)
            print(f"Running {len(pending)} fold(s) of {config.protocol.folds}" + (f" ({done} finished before)"
                                                                                  if done else ""))
        for fold in pending:
            result = run_fold(config, fold, pool, splits, pretrained, verbose)
            write_json(result, fold_path(out, fold))
            logger.info("Fold %d finished in %.0f s.", fold + 1, result["timing"]["fold_seconds"])
        logger.info("%d fold(s) in %.0f s.", len(pending), time.perf_counter() - started)
    return render_report(out)
