"""scripts/reproduce_paper004.py: a tiny end-to-end run, resuming, gamma chosen on validation only, the statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
from helpers import import_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reproduce_paper004.py"


@pytest.fixture(scope="module")
def repro() -> ModuleType:
    return import_script(SCRIPT, "reproduce_paper004")


def _tiny(out: Path, figures: str = "") -> list[str]:
    return ["--out", str(out), "--figures", figures, "--seeds", "0", "1", "--sweep-seeds", "1", "--gammas", "0.5",
            "1", "--bases", "fgsm", "--layers", "2", "--reductions", "sample", "batch", "--epochs", "1",
            "--n-train", "64", "--n-val", "32", "--n-test", "32", "--quiet"]


def test_paper_table_quotes_are_consistent(repro):
    # every quoted R&G score is the sum of its six accuracies (Table 2 of the paper)
    for row, values in repro.PAPER_TABLE2.items():
        assert sum(values[:6]) == pytest.approx(values[6], abs=0.011), row


def test_mean_ci_is_the_t_interval(repro):
    mean, low, high = repro.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), sd = 1
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert math.isnan(repro.mean_ci([5.0])[1])
    assert repro.mean_ci([4.0, 4.0]) == (4.0, 4.0, 4.0)


def test_tiny_run_writes_everything_and_resumes(repro, tmp_path, monkeypatch):
    out = tmp_path / "out"
    summary = repro.main(_tiny(out, figures=str(tmp_path / "fig")))
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    # normal + AT-FGSM on 2 seeds; 2 reductions x 2 gammas on the sweep seed; the chosen gamma on seed 1
    assert len(runs) == 4 + 4 + 2
    assert {"summary.json", "table.md", "table.rst"} <= {p.name for p in out.iterdir()}
    assert (tmp_path / "fig" / "paper004_rg.png").stat().st_size > 0
    assert (tmp_path / "fig" / "paper004_lsa.png").stat().st_size > 0
    rows = summary["rows"]
    assert list(rows) == ["Normal", "AT-FGSM", "AT-FGSM-LR-L2 (sample)", "AT-FGSM-LR-L2 (batch)"]
    for entry in rows.values():
        assert entry["seeds"] == [0, 1]
        assert len(entry["test_fgsm_percent"]) == len(repro.EVAL_EPS)
    assert "delta_rg_vs_base" in rows["AT-FGSM-LR-L2 (batch)"]
    normal = json.loads((out / "runs" / "normal_s0.json").read_text())
    assert set(normal["lsa"]) == {"learnable/sample", "learnable/batch", "activations/sample", "activations/batch"}
    assert normal["lsa"]["learnable/sample"]["layers"] == ["1", "3", "5"]  # the three ELU outputs
    assert json.loads((out / "summary.json").read_text())["chosen_gamma"] == summary["chosen_gamma"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(repro, "train_one", no_training)
    again = repro.main(_tiny(out))
    assert again["rows"] == json.loads(json.dumps(rows))


def test_gamma_is_chosen_on_validation_never_on_test(repro, tmp_path, monkeypatch):
    # fake runs: validation prefers gamma 0.5, the test set prefers gamma 1
    def fake(spec, data, args):
        good_val = spec.gamma == 0.5
        return {"row": spec.row, "config": spec.config, "seed": spec.seed, "base": spec.base, "layer": spec.layer,
                "reduction": spec.reduction, "gamma": spec.gamma, "train_s": 0.0,
                "val_fgsm": [0.5] * 6, "test_fgsm": [0.5] * 6,
                "val_rg": 400.0 if good_val else 300.0, "test_rg": 300.0 if good_val else 400.0,
                "test_relative_error_fgsm": {"sample": [0.1, 0.2, 0.3], "batch": [0.1, 0.2, 0.3]}}

    monkeypatch.setattr(repro, "train_one", fake)
    summary = repro.main(_tiny(tmp_path / "fake"))
    assert summary["chosen_gamma"] == {"AT-FGSM-LR-L2 (sample)": 0.5, "AT-FGSM-LR-L2 (batch)": 0.5}
    assert summary["rows"]["AT-FGSM-LR-L2 (sample)"]["test_rg"][0] == 300.0
