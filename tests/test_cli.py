"""
``art-latent`` as a tool people script: one-line errors with exit status 2, help with defaults for every option,
one weights format across ``demo``, ``benchmark`` and ``lsa``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from art_latent.cli import build_parser, main
from art_latent.models import build_model
from art_latent.weights import load_weights, save_weights


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "art_latent.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_errors_are_one_line_on_stderr_with_status_2(tmp_path):
    for argv, expected in [(("report", str(tmp_path / "missing_dir")), "does not exist"),
                           (("benchmark", "--config", str(tmp_path / "nope.toml")), "does not exist"),
                           (("lsa", str(tmp_path / "nope.pt")), "does not exist")]:
        result = _run(*argv)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith(f"art-latent {argv[0]}: error:")
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, expected", [
    (["report", "RUN"], "not the output directory"),
    (["benchmark", "--config", "BAD_TOML"], "[model].name"),
    (["benchmark", "--config", "GOOD_TOML", "--folds", "9"], "exceeds the 2 folds"),
    (["lsa", "WEIGHTS", "--model", "vgg16"], "not of --model 'vgg16'"),
    (["lsa", "WEIGHTS", "--eps", "16"], "did you mean 16/255"),
])
def test_every_command_reports_bad_input_in_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "RUN").mkdir()
    defense = '[[defenses]]\nname = "undefended"\ntrainer = "LatentTrainer"\n'
    (tmp_path / "BAD_TOML").write_text('[model]\nname = "os:system"\n' + defense)
    (tmp_path / "GOOD_TOML").write_text("[protocol]\nfolds = 2\n" + defense)
    save_weights(tmp_path / "WEIGHTS", build_model("small_cnn").state_dict(), model="small_cnn", dataset="bundled")
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's own errors (a --eps that does not parse)
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _actions(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prefix}{name} ")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, action


def test_every_option_has_help_and_the_help_shows_defaults():
    missing = [f"{p}{a.dest}" for p, a in _actions(build_parser()) if not a.help]
    assert not missing, missing
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "(default: 0.1)" in sub.choices["lsa"].format_help().replace("\n", " ").replace("  ", " ")
    assert "(default: demo_output)" in sub.choices["demo"].format_help()
    assert "(default: 0)" in sub.choices["demo"].format_help()


def test_lsa_reads_the_weights_format_with_its_metadata(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("small_cnn")
    path = save_weights(tmp_path / "w.pt", model.state_dict(), model="small_cnn", model_kwargs={},
                        dataset="bundled", input_shape=(1, 28, 28), nb_classes=10, digest="d", info={"epochs": 1})
    saved = load_weights(path)
    assert saved.meta("model") == "small_cnn" and saved.meta("nb_classes") == 10 and saved["info"] == {"epochs": 1}
    assert all(torch.equal(saved.state_dict[k], v) for k, v in model.state_dict().items())
    # no --model: it comes from the file
    status = main(["lsa", str(path), "--samples", "8", "--attack", "fgsm", "--eps", "8/255", "--noise", "none",
                   "--device", "cpu", "--quiet", "--out", str(tmp_path / "lsa")])
    out = capsys.readouterr().out
    assert status == 0 and "| 1: " in out  # layers numbered from 1, as in the benchmark report
    summary = json.loads((tmp_path / "lsa" / "lsa.json").read_text())
    assert summary["model"] == "small_cnn" and [p[:14] for p in summary["perturbations"]] == ["FGSM(eps=0.031"]


@pytest.mark.slow
def test_demo_saves_its_models_and_lsa_reads_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "small_cnn", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--device", "cpu",
                 "--quiet", "--seeds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and len(results["gain"]["per_seed"]) == 2
    assert results["conclusion"] in printed and "95% t interval" in printed
    for name in ("pretrained", "undefended", "hldr"):
        saved = load_weights(out / f"{name}.pt")
        assert saved.meta("model") == "small_cnn" and saved.meta("dataset") == "bundled"
    capsys.readouterr()
    assert main(["lsa", str(out / "hldr.pt"), "--samples", "8", "--attack", "none", "--noise", "gaussian",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "lsa")]) == 0


def test_the_committed_demo_results_were_made_with_the_demos_defaults():
    """docs/results.rst shows the demo's output: it must be what `art-latent demo` prints today."""
    import inspect
    from pathlib import Path

    from art_latent.experiments.demo import run_demo

    defaults = {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}
    folder = Path(__file__).resolve().parents[1] / "docs" / "_generated" / "demo"
    runs = sorted(folder.glob("results_threads*.json"))
    assert runs, "the committed demo results are missing"
    for path in runs:
        saved = json.loads(path.read_text())
        assert saved["model"] == defaults["model"] and saved["width"] == defaults["width"]
        assert saved["pretrain_epochs"] == defaults["pretrain_epochs"]
        assert saved["finetune_epochs_hldr"] == defaults["finetune_epochs"]
        assert saved["batch_size"] == defaults["batch_size"] and saved["xi"] == defaults["xi"]
        assert saved["eps_255"] == list(defaults["eps_list_255"]) and saved["dataset"] == defaults["dataset"]
        assert saved["seeds"] == list(range(defaults["seed"], defaults["seed"] + defaults["seeds"]))
        assert f"threads{saved['threads']}" in path.name and {"python", "torch", "art"} <= set(saved["versions"])
        table = (folder / path.name.replace(".json", ".md")).read_text()
        assert saved["conclusion"] in table
