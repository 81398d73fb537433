"""Nothing executes from a file the package reads: every torch.load is weights_only, cached weights are verified."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from art_latent.experiments import pretraining, protocol
from art_latent.io import sha256_file
from art_latent.trainers.checkpoint import plain, save_atomic

PACKAGE = Path(__file__).resolve().parents[1] / "art_latent"


class _Payload:
    """Unpickling this calls `marker.touch()`: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (Path.touch, (self.marker,))


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((.*?)\)\n", text, flags=re.S):
            calls.append((path.name, match.group(1)))
    assert calls, "no torch.load found: the pattern is stale"
    unsafe = [(name, args) for name, args in calls if "weights_only=True" not in args]
    assert not unsafe, unsafe


def _crafted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / protocol.PRETRAINED
    torch.save({"digest": "d", "state_dict": _Payload(marker), "info": {}}, path)
    return path, marker


def test_a_crafted_pretrained_file_is_never_deserialized_as_code(tmp_path):
    path, marker = _crafted(tmp_path)
    assert pretraining.load_pretrained(path, "d") is None  # no sidecar: not even opened
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({"digest": "d", "sha256": "0" * 64}))
    assert pretraining.load_pretrained(path, "d") is None  # wrong hash
    sidecar.write_text(json.dumps({"digest": "d", "sha256": sha256_file(path)}))
    assert pretraining.load_pretrained(path, "d") is None  # a matching sidecar: read with weights_only=True, refused
    assert not marker.exists()


def test_verified_cached_weights_round_trip(tmp_path):
    path = tmp_path / protocol.PRETRAINED
    state = {"w": torch.arange(3.0)}
    save_atomic(plain({"digest": "d", "state_dict": state, "info": {"epochs": 1}}), path)
    path.with_name(path.name + ".json").write_text(json.dumps({"digest": "d", "sha256": sha256_file(path)}))
    loaded = pretraining.load_pretrained(path, "d")
    assert loaded is not None and torch.equal(loaded[0]["w"], state["w"]) and loaded[1] == {"epochs": 1}
    assert pretraining.load_pretrained(path, "other settings") is None


# ---------------------------------------------------------------------------------------------------- configurations

def _config(**sections):
    data = {"defenses": [{"name": "undefended", "trainer": "LatentTrainer"}]}
    data.update(sections)
    return data


@pytest.mark.parametrize("sections, where", [
    ({"model": {"name": "os:system", "kwargs": {"command": "touch pwned"}}}, r"\[model\].name"),
    ({"model": {"name": "subprocess:Popen"}}, r"\[model\].name"),  # a class, but not a torch module
    ({"model": {"name": "art_latent.models:_private"}}, r"\[model\].name"),
    ({"defenses": [{"name": "x", "trainer": "os:system"}]}, "defenses"),
    ({"defenses": [{"name": "x", "trainer": "LatentTrainer",
                    "kwargs": {"validation_attack": {"object": "os:system"}}}]}, "defenses"),
    ({"defenses": [{"name": "x", "trainer": "LatentTrainer",
                    "kwargs": {"validation_attack": {"object": "subprocess:Popen"}}}]}, "defenses"),
    ({"attack": {"name": "os:system"}}, r"\[attack\].name"),
    ({"evaluation": {"extra_metrics": [{"name": "m", "function": "os:system"}]}}, "function"),
    ({"evaluation": {"extra_metrics": [{"name": "m", "function": "builtins:exec"}]}}, "function"),
])
def test_a_config_cannot_name_an_arbitrary_callable(tmp_path, monkeypatch, sections, where):
    from art_latent.experiments.config import config_from_dict

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=where):
        config_from_dict(_config(**sections))
    assert not (tmp_path / "pwned").exists()


def test_registered_functions_and_module_subclasses_are_allowed():
    from art_latent.experiments.registry import register, resolve_function, resolve_object

    def my_metric(classifier, x, y):
        return 0.0

    register(my_metric, name="test_security_metric")
    assert resolve_function("test_security_metric") is my_metric
    assert resolve_function(f"{__name__}:test_registered_functions_and_module_subclasses_are_allowed.<locals>"
                            ".my_metric") is my_metric
    assert resolve_object("torch.nn:Linear", torch.nn.Module) is torch.nn.Linear
    with pytest.raises(ValueError, match="not registered"):
        resolve_function(f"{__name__}:_config")
    with pytest.raises(ValueError, match="not a subclass"):
        resolve_object("torch.nn:Linear", torch.optim.Optimizer)


# ---------------------------------------------------------------------------------------------------- report DIR

def _run_dir(tmp_path: Path, fold: bool = True, **changes) -> Path:
    from art_latent.experiments.config import config_from_dict

    config = config_from_dict(_config()).to_dict()
    config["evaluation"]["attacks"] = ["fgsm"]
    config["evaluation"]["eps_255"] = [0.0, 8.0]
    for key, value in changes.items():
        section, _, name = key.partition("__")
        config[section][name] = value
    out = tmp_path / "run"
    (out / "folds").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"config": config, "digest": "d"}))
    if fold:
        entry = {"clean_accuracy": 0.9, "accuracy": {"fgsm": [0.9, 0.5]}, "flags": [],
                 "timing": {"ms_per_sample": 1.0, "fit_seconds": 1.0, "eval_seconds": 1.0}}
        results = {p: {"undefended": entry} for p in config["protocol"]["pair_sets"]}
        (out / "folds" / "fold_0.json").write_text(json.dumps(
            {"config_digest": "d", "fold": 0, "results": results, "timing": {"fold_seconds": 1.0}}))
    return out


@pytest.mark.parametrize("name", ["x/../../..", "../escape", "/abs", "D/../../x"])
def test_report_refuses_pair_set_names_that_leave_the_directory(tmp_path, name):
    from art_latent.experiments.summary import render_report

    out = _run_dir(tmp_path, protocol__pair_sets=[name])
    with pytest.raises(ValueError, match="pair set"):
        render_report(out)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == []


def test_report_replaces_symlinked_outputs_instead_of_following_them(tmp_path):
    from art_latent.experiments.summary import render_report

    out = _run_dir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("report.md", "results.json"):
        (out / name).symlink_to(victim)
    render_report(out)
    assert victim.read_text() == "keep me"
    assert not (out / "report.md").is_symlink() and "undefended" in (out / "report.md").read_text()
    assert list((out / "figures").glob("*.png"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for png in (out / "figures").iterdir():
        png.unlink()
    (out / "figures").rmdir()
    (out / "figures").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="symbolic link"):
        render_report(out)
    assert list(elsewhere.iterdir()) == []


def test_report_of_a_missing_or_foreign_directory_says_so(tmp_path):
    from art_latent.experiments.summary import render_report

    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_report(tmp_path / "nope")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a configuration"):
        render_report(tmp_path)


# ---------------------------------------------------------------------------------------------------- every loader

def _payload_file(tmp_path: Path, wrap=lambda payload: payload) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.pt"
    torch.save(wrap(_Payload(marker)), path)
    return path, marker


def _load_checkpoint(path: Path) -> None:
    from art_latent.trainers import checkpoint as ckpt

    ckpt.load(path)


def _load_blob(path: Path) -> None:
    from art_latent.io import sha256_file
    from art_latent.trainers import checkpoint as ckpt

    name = f"{ckpt.STATE_PREFIX}-0000.pt"
    path.rename(path.with_name(name))
    target = path.with_name(name)
    ckpt.load_blob({"file": name, "sha256": sha256_file(target), "keys": ["x"]}, target.parent)


def _load_denoiser(path: Path) -> None:
    from art_latent.defences import FeatureGuidedDenoiser

    FeatureGuidedDenoiser.load(path, device_type="cpu")


def _lsa_cli(path: Path) -> None:
    from art_latent.cli import main

    if main(["lsa", str(path), "--model", "small_cnn", "--samples", "8", "--out", str(path.parent / "lsa")]) != 0:
        raise ValueError("refused")


@pytest.mark.parametrize("loader", [_load_checkpoint, _load_blob, _load_denoiser, _lsa_cli],
                         ids=["checkpoint", "per-sample-state", "denoiser", "lsa-cli"])
def test_no_loader_runs_code_from_a_crafted_file(tmp_path, loader):
    path, marker = _payload_file(tmp_path, lambda payload: {"format": 3, "state_dict": payload, "config": payload})
    with pytest.raises((ValueError, RuntimeError, SystemExit, Exception)):
        loader(path)
    assert not marker.exists()


def test_a_per_sample_state_file_name_from_a_checkpoint_cannot_leave_the_directory(tmp_path):
    from art_latent.trainers import checkpoint as ckpt

    for name in ("../../etc/passwd", "/etc/passwd", "per_sample_state-../../x.pt", "other.pt"):
        with pytest.raises(ValueError, match="unexpected per-sample state file"):
            ckpt.load_blob({"file": name, "sha256": "0", "keys": []}, tmp_path)


def test_a_function_path_cannot_reach_another_module_through_an_import():
    from art_latent.experiments.registry import resolve_function

    for path in ("art_latent.io:os.system", "art_latent.trainers.base:os.system", "art_latent.io:os.remove",
                 "art_latent.experiments.registry:importlib.import_module", "art_latent.analysis.report:np.save"):
        with pytest.raises(ValueError):
            resolve_function(path)
