"""
Estimate the wall time of an ``art-latent benchmark`` run on this machine from measured per-sample costs.

Every cost is measured with the configuration's own model, trainers and attack suite on a few samples of its own
data, then multiplied by the sizes of the full run:

* pre-training: ms per sample-epoch of plain cross-entropy training (``LatentTrainer``) plus the validation pass;
* per fold and (pair set, defense) job: the job's ``ms_per_sample`` (fit wall time / (epochs x pairs), pair
  generation included, exactly what Table I of the report shows) on ``--train-samples`` benign samples, times the
  job's pairs and epochs;
* per fold: the evaluation of every fine-tuned model (``RobustnessReport.evaluate_model``: FGSM, PGD, transfer,
  noise, perturbation error) and the transfer examples, in ms per test sample, times the fold's test size.

Pre-training runs between ``patience + 1`` epochs (early stopping at the first chance) and ``epochs``; both ends
are printed. Usage (one thread, as every measurement of the project)::

    OMP_NUM_THREADS=1 python scripts/estimate_benchmark_time.py --config configs/paper000-fmnist.toml \\
        --data-path ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--train-samples", type=int, default=64, help="Benign samples per measured job.")
    parser.add_argument("--test-samples", type=int, default=64, help="Test samples per measured evaluation.")
    parser.add_argument("--json", default=None, help="Also write the measurements here.")
    args = parser.parse_args()

    from art_latent.experiments import protocol
    from art_latent.experiments.config import load_config
    from art_latent.trainers.base import LatentTrainer

    config = load_config(args.config)
    if args.data_path is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=args.data_path))
    torch.set_num_threads(1)
    pool = protocol.load_pool(config)
    n_pool = len(pool.y)
    n_rest = n_pool - config.pretrain.samples
    n_test = n_rest // config.protocol.folds
    if config.protocol.test_samples:
        n_test = min(n_test, config.protocol.test_samples)
    n_ft = min(config.protocol.finetune_samples or n_rest - n_test, n_rest - n_test)
    n_pre_val = round(config.pretrain.samples * config.pretrain.validation_fraction)
    n_pre_train = config.pretrain.samples - n_pre_val
    rng = np.random.default_rng(0)
    pick = rng.choice(n_pool, size=args.train_samples + args.test_samples, replace=False)
    x_ft, y_ft = pool.x[pick[: args.train_samples]], pool.y[pick[: args.train_samples]]
    x_te, y_te = pool.x[pick[args.train_samples :]], pool.y[pick[args.train_samples :]]
    noisy = np.clip(x_ft + rng.standard_normal(x_ft.shape).astype(np.float32) * config.protocol.noise_sigma_255 / 255,
                    0, 1).astype(np.float32)
    data = {"x_ft": x_ft, "y_ft": y_ft, "x_noisy": noisy, "x_test": x_te, "y_test": y_te}
    print(f"{config.name}: pool {n_pool}, pre-training {n_pre_train} (+{n_pre_val} validation), "
          f"{config.protocol.folds} folds of {n_test} test samples, {n_ft} fine-tuning samples per fold; "
          f"model {config.model.name} {config.model.kwargs}; measuring on {args.train_samples} train / "
          f"{args.test_samples} test samples")

    torch.manual_seed(0)
    model = protocol.new_model(config, pool)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    clf = protocol.make_classifier(config, model, pool)
    trainer = LatentTrainer(clf, seed=0)
    trainer.fit(x_ft[:8], y_ft[:8], batch_size=8, nb_epochs=1, verbose=False)  # warm-up
    started = time.perf_counter()
    trainer.fit(x_ft, y_ft, batch_size=config.pretrain.batch_size, nb_epochs=1, verbose=False)
    pre_ms = 1000 * (time.perf_counter() - started) / len(y_ft)
    started = time.perf_counter()
    trainer.evaluate(torch.from_numpy(x_te), torch.from_numpy(y_te))
    val_ms = 1000 * (time.perf_counter() - started) / len(y_te)
    print(f"pre-training: {pre_ms:.2f} ms per sample-epoch, validation {val_ms:.2f} ms per sample")

    report = protocol.make_report(config, seed=0)
    jobs = protocol._order_jobs(config)
    results = {"pretrain_ms_per_sample_epoch": pre_ms, "validation_ms_per_sample": val_ms, "jobs": []}
    transfer = None
    fold_fit_s = fold_eval_s = 0.0
    for pair_set, defense in jobs:
        clf, record = protocol.run_job(config, defense, pair_set, pool, pretrained, data, seed=0)
        if defense.name == config.evaluation.reference and transfer is None and "transfer" in report.attacks:
            started = time.perf_counter()
            transfer = report.transfer_examples(clf, x_te, y_te)
            transfer_ms = 1000 * (time.perf_counter() - started) / len(y_te)
            results["transfer_ms_per_test_sample"] = transfer_ms
            fold_eval_s += transfer_ms * n_test / 1000
            print(f"transfer examples: {transfer_ms:.2f} ms per test sample")
        evaluation = report.evaluate_model(clf, x_te, y_te, transfer, is_reference=defense.name == config.evaluation
                                           .reference, name=defense.name)
        eval_ms = 1000 * evaluation["timing"]["eval_seconds"] / len(y_te)
        pairs_per_sample = record["pairs"] / len(y_ft)
        epochs = record["epochs"]
        fit_s = record["ms_per_sample"] * pairs_per_sample * n_ft * epochs / 1000
        eval_s = eval_ms * n_test / 1000
        fold_fit_s += fit_s
        fold_eval_s += eval_s
        results["jobs"].append({"defense": defense.name, "pair_set": pair_set, "ms_per_sample": record["ms_per_sample"],
                                "eval_ms_per_test_sample": eval_ms, "fold_fit_s": fit_s, "fold_eval_s": eval_s})
        print(f"{defense.name:>12} {pair_set:>3}: fit {record['ms_per_sample']:7.2f} ms/pair x {pairs_per_sample:g} "
              f"pairs x {n_ft} x {epochs} epochs = {_duration(fit_s)}; eval {eval_ms:7.2f} ms/test sample x "
              f"{n_test} = {_duration(eval_s)} (per fold)")
    per_epoch_s = (pre_ms * n_pre_train + val_ms * n_pre_val) / 1000
    low_epochs = min(config.pretrain.epochs, config.pretrain.patience + 1) if config.pretrain.patience else \
        config.pretrain.epochs
    folds_s = config.nb_folds_to_run * (fold_fit_s + fold_eval_s)
    results.update(fold_fit_s=fold_fit_s, fold_eval_s=fold_eval_s, pretrain_epoch_s=per_epoch_s,
                   total_low_s=per_epoch_s * low_epochs + folds_s,
                   total_high_s=per_epoch_s * config.pretrain.epochs + folds_s)
    print(f"per fold: fine-tuning {_duration(fold_fit_s)} + evaluation {_duration(fold_eval_s)}; "
          f"{config.nb_folds_to_run} folds: {_duration(folds_s)}")
    print(f"pre-training: {per_epoch_s:.1f} s per epoch; {low_epochs} epochs: {_duration(per_epoch_s * low_epochs)}, "
          f"{config.pretrain.epochs} epochs: {_duration(per_epoch_s * config.pretrain.epochs)}")
    print(f"total: {_duration(results['total_low_s'])} to {_duration(results['total_high_s'])}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
