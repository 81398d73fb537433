"""
Every example in ``examples/`` runs end to end in its ``--smoke`` mode (tiny data, one epoch), so the examples never
rot. The examples are found by glob (files starting with ``_`` are helpers), so a new one is tested automatically.

Each example runs in its own Python process, as a user would start it. The processes are started together, at most
one per CPU core, by a module fixture; each test then checks one example's exit status and output table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 300


def test_examples_are_found():
    assert len(EXAMPLES) >= 7, [p.name for p in EXAMPLES]


def _run(script: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Run the examples whose tests were collected, in parallel processes: ``{name: (process, out dir)}``."""
    wanted = {item.callspec.params["script"].stem for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "script" in item.callspec.params}
    scripts = [p for p in EXAMPLES if p.stem in wanted]
    outs = {p.stem: tmp_path_factory.mktemp(p.stem) for p in scripts}
    with ThreadPoolExecutor(max_workers=max(1, min(len(scripts), os.cpu_count() or 1))) as pool:
        processes = dict(zip(outs, pool.map(lambda p: _run(p, outs[p.stem]), scripts), strict=True))
    return {name: (processes[name], outs[name]) for name in outs}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, smoke_runs):
    process, out = smoke_runs[script.stem]
    assert process.returncode == 0, f"{script.name} failed:\n{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    table = out / f"{script.stem}.txt"
    assert table.is_file(), f"{script.name} wrote no {table.name}: {sorted(p.name for p in out.iterdir())}"
    assert "|" in table.read_text(), f"{table.name} holds no table"
    # the progress lines show_progress promises: one per training epoch, with the time since the start
    assert re.search(r"^\[\s*\d+ s\] \w+ epoch 1/\d+: ", process.stderr, re.M), \
        f"{script.name} printed no epoch line:\n{process.stderr[-2000:]}"
