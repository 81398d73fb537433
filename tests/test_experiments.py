"""The k-fold protocol: configuration, trainer registry, splits, jobs, an end-to-end run, resume and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from art_latent.experiments import protocol
from art_latent.experiments.config import ConfigError, config_from_dict, load_config
from art_latent.experiments.registry import resolve_kwargs, resolve_trainer
from art_latent.experiments_cli import add_benchmark_parsers
from art_latent.perturbations import GaussianNoiseSource
from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.hldr import HLDRTrainer

REPO = Path(__file__).resolve().parent.parent
TIMING_KEYS = {"timing", "ms_per_sample", "fit_seconds", "eval_seconds", "wall_seconds"}

TINY_TOML = """
name = "tiny"
seed = 0
device = "cpu"

[data]
dataset = "bundled"
limit = 400

[model]
name = "small_cnn"
kwargs = { channels = [4], hidden = 8 }

[pretrain]
samples = 150
epochs = 2
validation_fraction = 0.2
patience = 1

[protocol]
folds = 2
finetune_samples = 60
test_samples = 50
epochs = 1
batch_size = 32
budgets_255 = [0, 16]

[evaluation]
attacks = ["fgsm", "pgd", "transfer", "noise"]
eps_255 = [0, 8, 16]
sigmas_255 = [0, 32]
pgd_max_iter = 2
batch_size = 64

[[defenses]]
name = "undefended"
trainer = "LatentTrainer"
pair_sets = ["D"]

[[defenses]]
name = "hldr"
trainer = "HLDRTrainer"
kwargs = { xi = 0.5 }
"""


def _tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def _base_dict() -> dict[str, Any]:
    return {"defenses": [{"name": "undefended", "trainer": "LatentTrainer"}]}


def _without_timing(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_timing(v) for k, v in data.items() if k not in TIMING_KEYS}
    if isinstance(data, list):
        return [_without_timing(v) for v in data]
    return data


class RecordingTrainer(LatentTrainer):
    """Records what the protocol gives it; the trainer of the job tests."""

    calls: list[dict[str, Any]] = []

    def __init__(self, classifier, attack=None, budgets=None, noise_sigma=None, **kwargs):
        super().__init__(classifier, **kwargs)
        self.record = {"attack": attack, "budgets": budgets, "noise_sigma": noise_sigma, "seed": self.seed}

    def fit(self, x, y, **kwargs):
        RecordingTrainer.calls.append({**self.record, "x": x, "y": y, **kwargs})
        self.history = [{"epoch": 1, "loss": 0.0}]
        return self.history


class BenignTrainer(LatentTrainer):
    """A trainer without budgets/noise_sigma/attack: the protocol gives it the members of the pairs."""

    calls: list[dict[str, Any]] = []

    def fit(self, x, y, **kwargs):
        BenignTrainer.calls.append({"x": x, "y": y, **kwargs})
        return []


# ---------------------------------------------------------------------------------------------------- configuration


def test_shipped_configs_load():
    quick = load_config(REPO / "configs" / "quick.toml")
    assert quick.data.dataset == "bundled" and quick.protocol.budgets_255 == (0.0, 16.0, 32.0)
    assert quick.defenses[0].name == "undefended" and quick.evaluation.reference == "undefended"
    paper = load_config(REPO / "configs" / "paper000-fmnist.toml")
    assert paper.protocol.folds == 10 and paper.pretrain.samples == 10000 and paper.protocol.finetune_samples == 6000
    assert paper.model.name == "vgg16" and paper.model.kwargs == {"width": 1.0} and paper.optimizer.name == "NAdam"
    assert [d.trainer for d in paper.defenses][:2] == ["LatentTrainer", "HLDRTrainer"]
    assert paper.defenses[1].kwargs == {"xi": 0.25}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"protocol": {"fold": 3}}, r"\[protocol\]: unknown key\(s\) \['fold'\]"),
        ({"protocol": {"folds": 1}}, r"\[protocol\].folds: must be an integer >= 2"),
        ({"protocol": {"pair_sets": ["D", "X"]}}, r"pair_sets: must be one of"),
        ({"evaluation": {"attacks": ["fgsm", "cw"]}}, r"\[evaluation\].attacks"),
        ({"evaluation": {"reference": "nobody"}}, r"'nobody' is not a defense name"),
        ({"optimizer": {"name": "Nadamm"}}, r"not a torch.optim optimizer"),
        ({"attack": {"name": "NoSuchAttack"}}, r"not an ART evasion attack"),
        ({"pretrain": {"patience": 3, "validation_fraction": 0.0}}, r"needs a validation set"),
        ({"colour": "blue"}, r"unknown top-level key\(s\) \['colour'\]"),
        ({"defenses": [{"name": "a", "trainer": "NoSuchTrainer"}]}, r"Unknown trainer class"),
        ({"defenses": [{"name": "undefended", "trainer": "HLDRTrainer", "kwargs": {"chi": 0.1}}]},
         r"HLDRTrainer does not accept \['chi'\]; accepted keyword arguments: \['attack', 'xi'"),
        ({"defenses": [{"name": "undefended", "trainer": "LatentTrainer", "pair_sets": ["D_N"]}],
          "protocol": {"pair_sets": ["D"]}}, r"\['D_N'\] not in \[protocol\].pair_sets"),
        ({"defenses": [{"name": "undefended", "trainer": "LatentTrainer"}] * 2}, r"duplicate names"),
    ],
)
def test_bad_configs_are_rejected_with_the_key(patch, message):
    data = _base_dict()
    data.update(patch)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_optional_missing_trainer_is_skipped_and_toml_errors(tmp_path, caplog):
    data = _base_dict()
    data["defenses"].append({"name": "future", "trainer": "NotWrittenYetTrainer", "optional": True})
    config = config_from_dict(data)
    assert [d.name for d in config.defenses] == ["undefended"]
    assert "Skipping optional defense 'future'" in caplog.text
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_digest_ignores_names_paths_and_run_folds(tmp_path):
    config = load_config(_tiny(tmp_path))
    import dataclasses

    same = dataclasses.replace(config, name="other", data=dataclasses.replace(config.data, path="/elsewhere"),
                               protocol=dataclasses.replace(config.protocol, run_folds=1))
    assert same.digest() == config.digest()
    changed = dataclasses.replace(config, protocol=dataclasses.replace(config.protocol, epochs=5))
    assert changed.digest() != config.digest()


# ---------------------------------------------------------------------------------------------------- registry


def test_trainers_resolve_by_name_path_and_submodule():
    assert resolve_trainer("HLDRTrainer") is HLDRTrainer
    assert resolve_trainer("art_latent.trainers.hldr:HLDRTrainer") is HLDRTrainer
    assert resolve_trainer(f"{__name__}:RecordingTrainer") is RecordingTrainer
    with pytest.raises(ValueError, match="Unknown trainer"):
        resolve_trainer("NoSuchTrainer")
    with pytest.raises(ValueError, match="Cannot import"):
        resolve_trainer("no_such_module:Trainer")
    with pytest.raises(ValueError, match="not a subclass of art.defences.trainer.trainer.Trainer"):
        resolve_trainer("art_latent.perturbations:GaussianNoiseSource")


def test_resolve_kwargs_converts_per_255_strings_and_builds_objects():
    kwargs = resolve_kwargs({"sigma": "32/255", "name": "x/255y", "list": ["8/255", 1],
                             "noise": {"object": "art_latent.perturbations:GaussianNoiseSource",
                                       "kwargs": {"sigma": "16/255"}}},
                            {"clip_values": (0.0, 1.0), "device_type": "cpu"})
    assert kwargs["sigma"] == pytest.approx(32 / 255) and kwargs["name"] == "x/255y"
    assert kwargs["list"] == [pytest.approx(8 / 255), 1]
    noise = kwargs["noise"]
    assert isinstance(noise, GaussianNoiseSource) and noise.sigma == pytest.approx(16 / 255)
    assert noise.clip_values == (0.0, 1.0)  # filled from the context: the constructor takes clip_values


# ---------------------------------------------------------------------------------------------------- splits and jobs


def test_splits_are_stratified_disjoint_and_deterministic(tmp_path):
    config = load_config(_tiny(tmp_path))
    pool = protocol.load_pool(config)
    assert len(pool.y) == 400 and np.bincount(pool.y).tolist() == [40] * 10  # stratified limit
    splits = protocol.make_splits(config, pool.y)
    assert len(splits.pretrain) + len(splits.validation) == 150 and len(splits.validation) == 30
    rest = np.setdiff1d(np.arange(400), np.concatenate([splits.pretrain, splits.validation]))
    tests = np.concatenate([test for _, test in splits.folds])
    np.testing.assert_array_equal(np.sort(tests), rest)  # the test parts partition the rest
    for train, test in splits.folds:
        assert not set(train) & set(test) and not set(train) & set(splits.pretrain)
        assert np.bincount(pool.y[test], minlength=10).min() >= 12  # stratified: 250 / 2 / 10 = 12.5 per class
    again = protocol.make_splits(config, pool.y)
    np.testing.assert_array_equal(again.folds[1][1], splits.folds[1][1])
    data = protocol.fold_data(config, pool, splits, 0)
    assert len(data["y_ft"]) == 60 and len(data["y_test"]) == 50 and np.bincount(data["y_ft"]).tolist() == [6] * 10
    noise = data["x_noisy"] - data["x_ft"]
    assert data["x_noisy"].min() >= 0 and data["x_noisy"].max() <= 1 and 0.08 < noise.std() < 0.13


def test_jobs_get_pairs_attack_seed_and_epochs(tmp_path):
    config = load_config(_tiny(tmp_path))
    pool = protocol.load_pool(config)
    splits = protocol.make_splits(config, pool.y)
    data = protocol.fold_data(config, pool, splits, 0)
    torch.manual_seed(0)
    pretrained = protocol.new_model(config, pool).state_dict()
    from art_latent.experiments.config import DefenseSpec

    RecordingTrainer.calls.clear()
    BenignTrainer.calls.clear()
    aware = DefenseSpec(name="aware", trainer=f"{__name__}:RecordingTrainer", kwargs={"budgets": ["8/255"]}, epochs=3)
    benign = DefenseSpec(name="benign", trainer=f"{__name__}:BenignTrainer")
    for pair_set in ("D", "D_N"):
        protocol.run_job(config, aware, pair_set, pool, pretrained, data, seed=7)
        protocol.run_job(config, benign, pair_set, pool, pretrained, data, seed=7)
    d_aware, dn_aware = RecordingTrainer.calls
    # Pair-aware: the benign samples once, the trainer builds its own pairs; config kwargs win over the protocol's.
    assert d_aware["budgets"] == [pytest.approx(8 / 255)] and d_aware["noise_sigma"] is None
    assert dn_aware["noise_sigma"] == pytest.approx(32 / 255)
    np.testing.assert_array_equal(d_aware["x"], data["x_ft"])
    assert type(d_aware["attack"]).__name__ == "FastGradientMethod" and d_aware["attack"].eps == pytest.approx(16 / 255)
    assert d_aware["seed"] == 7 and d_aware["nb_epochs"] == 3 and d_aware["batch_size"] == 32
    # Benign-only: the benign member of each adversarial pair (x per budget), plus the noisy member for D_N.
    d_benign, dn_benign = BenignTrainer.calls
    np.testing.assert_array_equal(d_benign["x"], np.concatenate([data["x_ft"]] * 2))
    np.testing.assert_array_equal(dn_benign["x"], np.concatenate([data["x_ft"]] * 2 + [data["x_noisy"]]))
    np.testing.assert_array_equal(dn_benign["y"], np.concatenate([data["y_ft"]] * 3))
    assert d_benign["nb_epochs"] == 1


# ---------------------------------------------------------------------------------------------------- end to end


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="art-latent")
    add_benchmark_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.slow
def test_two_fold_run_from_the_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    args = _parse(["benchmark", "--config", str(_tiny(tmp_path)), "--out", str(out), "--quiet"])
    assert args.handler(args) == 0
    assert "2 fold(s) of 2 finished" in capsys.readouterr().out
    for name in ("config.json", "config.toml", "pretrained.pt", "pretrain.json", "results.json", "report.md",
                 "folds/fold_00.json", "folds/fold_01.json", "figures/accuracy_vs_eps_fgsm_D.png",
                 "figures/accuracy_vs_sigma_D_N.png", "figures/perturbation_error.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["nb_folds"] == 2 and results["folds"] == [0, 1]
    summary = results["summary"]
    assert set(summary) == {"D", "D_N"}
    assert set(summary["D"]) == {"undefended", "hldr"} and set(summary["D_N"]) == {"hldr"}
    for entries in summary.values():
        for name, entry in entries.items():
            assert entry["n_folds"] == 2
            for attack in ("fgsm", "pgd", "transfer"):
                curve = entry["accuracy"][attack]
                assert len(curve["mean"]) == 3 and all(np.isfinite(curve["mean"] + curve["half_width"]))
                gain = entry["gain"][attack]["mean"]
                assert all(np.isfinite(gain)) and (name != "undefended" or gain == [0.0, 0.0, 0.0])
            assert all(np.isfinite(entry["noise_accuracy"]["mean"]))
            errors = entry["perturbation_error"]["mean"]
            assert len(errors) == 2 and all(np.isfinite(errors))
            assert np.isfinite(entry["ms_per_sample"]["mean"]) and entry["ms_per_sample"]["mean"] > 0
    fold = json.loads((out / "folds/fold_00.json").read_text())
    hldr = fold["results"]["D_N"]["hldr"]
    assert hldr["training"]["pairs"] == 60 * 3 and hldr["training"]["kwargs"]["noise_sigma"] == pytest.approx(32 / 255)
    report = (out / "report.md").read_text()
    assert "Table I" in report and "| hldr |" in report and "![Fig. 2" in report
    # `art-latent report` re-renders the same report from the JSON alone.
    (out / "report.md").unlink()
    args = _parse(["report", str(out)])
    assert args.handler(args) == 0
    assert (out / "report.md").read_text() == report


def test_resume_after_an_interrupted_fold_gives_the_uninterrupted_results(tmp_path, monkeypatch):
    text = TINY_TOML.replace('attacks = ["fgsm", "pgd", "transfer", "noise"]', 'attacks = ["fgsm", "transfer"]')
    text = text.replace("epochs = 2\n", "epochs = 1\n").replace("budgets_255 = [0, 16]", "budgets_255 = [0, 16]\n"
                                                                 'pair_sets = ["D"]')
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    config = load_config(path)
    protocol.run_benchmark(config, tmp_path / "full", verbose=False)

    real = protocol.run_fold
    calls = []

    def interrupted(config, fold, *args, **kwargs):
        calls.append(fold)
        if fold == 1:
            raise KeyboardInterrupt("simulated interruption during fold 2")
        return real(config, fold, *args, **kwargs)

    monkeypatch.setattr(protocol, "run_fold", interrupted)
    with pytest.raises(KeyboardInterrupt):
        protocol.run_benchmark(config, tmp_path / "resumed", verbose=False)
    assert (tmp_path / "resumed/folds/fold_00.json").exists() and not (tmp_path / "resumed/folds/fold_01.json").exists()
    assert not list((tmp_path / "resumed/folds").glob("*.tmp"))
    calls.clear()
    monkeypatch.setattr(protocol, "run_fold", lambda config, fold, *a, **k: calls.append(fold) or real(config, fold,
                                                                                                        *a, **k))
    protocol.run_benchmark(config, tmp_path / "resumed", verbose=False)
    assert calls == [1]  # fold 1 only: fold 0 was finished
    for name in ("folds/fold_00.json", "folds/fold_01.json", "results.json"):
        full = json.loads((tmp_path / "full" / name).read_text())
        resumed = json.loads((tmp_path / "resumed" / name).read_text())
        assert _without_timing(resumed) == _without_timing(full), name
    # A finished fold of another configuration is never mixed in.
    other = load_config(path)
    other.protocol.epochs = 2
    with pytest.raises(ValueError, match="another configuration"):
        protocol.run_benchmark(other, tmp_path / "resumed", verbose=False)
