"""
``scripts/paper000_claims.py``: paired, fold-by-fold differences between defenses of a finished benchmark run, checked
against hand-computed values on a two-fold toy run, and the committed ``claims.md`` against a fresh computation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType

import pytest
from helpers import import_script
from scipy import stats

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "paper000_claims.py"
COMMITTED = ROOT / "benchmarks" / "results" / "paper000-fmnist-cpu"
EPS = [0.0, 8.0]
SIGMAS = [0.0, 64.0]


@pytest.fixture(scope="module")
def claims() -> ModuleType:
    """The script, imported as a module."""
    return import_script(SCRIPT, "paper000_claims")


def _result(clean: float, fgsm8: float, ms: float) -> dict:
    return {
        "clean_accuracy": clean,
        "accuracy": {"fgsm": [clean, fgsm8], "pgd": [clean, fgsm8 / 2]},
        "auc": {"fgsm": fgsm8, "pgd": fgsm8 / 2},
        "noise_accuracy": [clean, clean - 0.1],
        "timing": {"ms_per_sample": ms},
    }


def _toy_run(tmp_path: Path) -> Path:
    config = {"config": {"evaluation": {"eps_255": EPS, "sigmas_255": SIGMAS}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "folds").mkdir()
    names = ("undefended", "HLDR", "FIMR", "HGD", "AGNT", "Stability")
    for fold, shift in enumerate((0.0, 0.1)):
        d = {name: _result(0.8, 0.3 + 0.1 * i + shift * (name == "HLDR"), 1.0 + i) for i, name in enumerate(names)}
        d_n = {name: _result(0.7, 0.2, 2.0) for name in ("HLDR", "FIMR", "HGD")}
        (tmp_path / "folds" / f"fold_{fold:02d}.json").write_text(json.dumps({"results": {"D": d, "D_N": d_n}}))
    return tmp_path


def test_paired_differences_match_hand_computed_values(claims: ModuleType, tmp_path: Path) -> None:
    result = claims.claims(_toy_run(tmp_path))
    assert result["folds"] == 2
    # HLDR's FGSM accuracy at 8/255 is 0.4 and 0.5 in the two folds, HGD's 0.6 in both: differences -0.2 and -0.1.
    mean, low, high = result["paired"]["HLDR - HGD"]["fgsm 8/255"]
    half = stats.t.ppf(0.975, 1) * 0.05  # standard error of (-0.2, -0.1) is 0.05
    assert mean == pytest.approx(-0.15)
    assert (low, high) == pytest.approx((-0.15 - half, -0.15 + half))
    assert result["paired"]["HLDR (D_N) - HLDR (D)"]["clean"][0] == pytest.approx(-0.1)
    assert result["paired"]["HLDR (D_N) - HLDR (D)"]["noise 64/255"][0] == pytest.approx(-0.1)
    assert result["ms_per_sample"]["HGD (D)"][0] == pytest.approx(4.0)
    markdown = claims.to_markdown(result)
    assert "| HLDR - HGD | +0.000 [+0.000, +0.000] " in markdown  # clean accuracy equal in every fold


def test_committed_claims_are_what_the_script_computes(claims: ModuleType) -> None:
    if not (COMMITTED / "claims.md").exists():
        pytest.skip("no committed paper 000 run")
    assert (COMMITTED / "claims.md").read_text() == claims.to_markdown(claims.claims(COMMITTED))
