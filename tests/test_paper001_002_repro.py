"""
Fast checks of ``scripts/reproduce_paper001_002.py`` (papers 001, AFD, and 002, layerwise perturbation training): a
tiny run on the bundled Fashion-MNIST subset, resume without retraining or re-evaluating, and the validation-only
choice of the layerwise eps and of AFD's learning rates.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from types import ModuleType

import pytest

logger = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper001_002.py"

pytest.importorskip("multiprocess")  # ART's APGD (AutoAttack) imports it


@pytest.fixture(scope="module")
def repro() -> ModuleType:
    """The script as a module, imported the way it runs (its folder on ``sys.path``, for ``reproduce_paper003``)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module(SCRIPT.stem)


def _tiny_args(out: Path) -> list[str]:
    return ["--out", str(out), "--figures", str(out / "figures"), "--data", "bundled", "--limit", "120",
            "--seeds", "0", "1", "--clean-seeds", "2", "--channels", "4", "8", "--hidden", "16", "--clean-epochs", "1",
            "--robust-epochs", "1", "--layerwise-eps", "10", "30", "--afd-lrs", "0.05:0.05", "0.01:0.05",
            "--curve-eps", "0", "0.05", "0.1", "--n-eval", "30", "--n-val-robust", "30", "--aa-iter", "3",
            "--aa-targets", "1", "--aa-queries", "5", "--log-every", "1", "--quiet"]


def test_tiny_run_and_resume(repro: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every row runs end to end on a tiny subset and writes per-run JSON, weights, the evaluations, the transfer
    evaluation, the summary, both tables and both figures; a second invocation trains and evaluates nothing.

    :param repro: The imported script.
    :param tmp_path: Where the run writes.
    :param monkeypatch: Replaces training and attacks by failures for the second invocation.
    """
    summary = repro.main(_tiny_args(tmp_path))
    runs = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    # seed 0: plain, pgd_at, 2 AFD and 2 layerwise grid points; seeds 1, 2: plain, layerwise; seed 1: pgd_at, afd
    assert len(runs) == 12, runs
    assert all((tmp_path / "weights" / name.replace(".json", ".pt")).exists() for name in runs)
    evals = sorted(p.name for p in (tmp_path / "eval").glob("*.json"))
    # the chosen runs (4 + 2 + 2 + 2) and the transfer attacks of the seeds with every row (0 and 1)
    assert len(evals) == 12 and {"transfer_s0.json", "transfer_s1.json"} <= set(evals), evals
    assert (tmp_path / "table.md").exists() and (tmp_path / "table.rst").exists()
    assert {p.name for p in (tmp_path / "figures").glob("*.png")} == {"paper001_002_robustness.png",
                                                                      "paper001_002_afd_discriminator.png"}
    on_disk = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["nb_runs"] == 12 and len(on_disk["transfer"]) == 2
    rows = summary["rows"]
    assert set(rows) == set(repro.ROWS)
    assert rows["plain"]["seeds"] == [0, 1, 2] and rows["layerwise"]["seeds"] == [0, 1, 2]
    assert rows["afd"]["seeds"] == [0, 1] and rows["pgd_at"]["seeds"] == [0, 1]
    selection = summary["selection"]  # later seeds train the chosen hyper-parameters only
    assert {p.stem for p in (tmp_path / "runs").glob("*_s1.json")} == {
        "plain_s1", "pgd_at_s1", repro.run_key("afd", 1, tuple(selection["afd"]["chosen"])),
        repro.run_key("layerwise", 1, selection["layerwise"]["chosen"])}
    for row in rows.values():
        assert 0.0 <= row["test_acc"][0] <= 1.0 and len(row["pgd"]) == 3
        assert row["sensitivity_median"][0] is None and row["sensitivity_median"][1][0] >= 0.0
    afd = json.loads((tmp_path / "runs" / "afd_lrE0.05_lrD0.05_s0.json").read_text(encoding="utf-8"))
    assert afd["step_log"] and {"disc_acc_clean", "disc_acc_adv"} <= set(afd["step_log"][0])
    assert "test_acc" not in afd  # training records hold validation numbers only
    assert summary["selection"]["layerwise"]["chosen"] in (10.0, 30.0)

    def no_work(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(repro, "train_run", no_work)
    monkeypatch.setattr(repro, "eval_pgd", no_work)
    again = repro.main(_tiny_args(tmp_path))
    assert again["rows"] == summary["rows"]
    assert again["paired"]["layerwise-plain"]["seeds"] == [0, 1, 2] and again["paired"]["afd-pgd_at"]["seeds"] == [0, 1]
    only = repro.main([*_tiny_args(tmp_path), "--summary-only"])
    assert only["rows"] == summary["rows"]


def test_summary_only_trains_nothing(repro: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    ``--summary-only`` (for a summary while another invocation trains) neither trains nor attacks: with nothing
    finished it writes an empty summary.

    :param repro: The imported script.
    :param tmp_path: An empty output directory.
    :param monkeypatch: Makes training and attacks fail.
    """

    def no_work(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("--summary-only trained or attacked")

    monkeypatch.setattr(repro, "train_run", no_work)
    monkeypatch.setattr(repro, "eval_pgd", no_work)
    summary = repro.main([*_tiny_args(tmp_path), "--summary-only"])
    assert summary["nb_runs"] == 0 and summary["rows"] == {} and summary["selection"] == {}


def test_choice_uses_validation_only(repro: ModuleType) -> None:
    """
    The layerwise eps and AFD's learning rates come from validation numbers; test numbers never change the choice.

    :param repro: The script module.
    """
    layerwise = [
        {"eps": 10.0, "val_acc": 0.90, "test_acc": 0.99},
        {"eps": 20.0, "val_acc": 0.91, "test_acc": 0.10},
        {"eps": 30.0, "val_acc": 0.91, "test_acc": 0.10},
    ]
    assert repro.choose(layerwise, "layerwise") == 20.0  # tie at 0.91: the smaller eps
    afd = [
        {"lr_encoder": 0.05, "lr_discriminator": 0.05, "val_acc": 0.80, "val_pgd": 0.60, "test_pgd": 0.10},
        {"lr_encoder": 0.01, "lr_discriminator": 0.05, "val_acc": 0.85, "val_pgd": 0.55, "test_pgd": 0.90},
    ]
    assert repro.choose(afd, "afd") == (0.05, 0.05)
    afd[1]["val_pgd"] = 0.60
    assert repro.choose(afd, "afd") == (0.01, 0.05)  # tie on PGD: the higher clean validation accuracy


def test_paper_numbers_quoted(repro: ModuleType) -> None:
    """
    The quoted numbers: AFD above AT under white-box PGD and in AUC on MNIST (paper 001); layerwise above the
    baseline on clean CIFAR-10 (paper 002).

    :param repro: The script module.
    """
    paper = repro.PAPER001_MNIST
    assert paper["afd"]["pgd"] > paper["pgd_at"]["pgd"] and paper["afd"]["auc_pgd"] > paper["pgd_at"]["auc_pgd"]
    cifar = repro.PAPER002_CIFAR10
    assert cifar["ours_orig"][0] > cifar["baseline"][0] and len(cifar["ours_orig"]) == len(cifar["fgs_eps"])
