"""
``kill -9`` at random moments, during checkpoint writes too, then resume: 20+ kills of one run end with the weights
of the uninterrupted run, bit for bit, and no temporary file left behind (CPU).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

_CHILD = textwrap.dedent(
    """
    import io, os, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from art.attacks.evasion import FastGradientMethod
    from helpers import make_classifier
    from art_latent import HLDRTrainer
    import art_latent.trainers.checkpoint as ckpt

    directory, out = sys.argv[1], sys.argv[2]
    if directory != "-":
        original = torch.save

        def slow_save(obj, path, *args, **kwargs):
            # half the bytes, a pause (the parent may kill now), the rest: a kill lands inside the write
            buffer = io.BytesIO()
            original(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(path, "wb") as file:
                file.write(data[: len(data) // 2])
                file.flush()
                print("WRITING", flush=True)
                time.sleep(0.02)
                file.write(data[len(data) // 2 :])

        ckpt.torch.save = slow_save
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    y = np.arange(16) % 3
    clf = make_classifier()
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
    trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), noise_sigma=0.05, seed=7)
    print("READY", flush=True)
    trainer.fit(x, y, nb_epochs={epochs}, batch_size=8, verbose=False,
                checkpoint_dir=None if directory == "-" else directory, resume=directory != "-")
    torch.save(clf.model.state_dict(), out)
    print("DONE", flush=True)
    """
)

EPOCHS = 150
KILLS = 20


@pytest.mark.slow
def test_twenty_kill_9s_then_resume_give_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent), epochs=EPOCHS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ART_DATA_PATH": str(tmp_path / "art")}
    directory = tmp_path / "ckpt"

    def start(target: str, out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), target, str(out)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    reference = start("-", tmp_path / "reference.pt")
    assert reference.wait(timeout=600) == 0
    rng = random.Random(0)
    kills = during_writes = 0
    for attempt in range(KILLS + 5):
        if kills >= KILLS:
            break
        process = start(str(directory), tmp_path / "resumed.pt")
        assert process.stdout.readline().strip() == "READY"
        if attempt % 2:  # inside the k-th write from now
            for _ in range(rng.randint(1, 6)):
                line = process.stdout.readline().strip()
                if line != "WRITING":
                    break
            else:
                process.kill()
                during_writes += 1
        else:  # at a random moment
            time.sleep(rng.uniform(0.05, 0.6))
            process.kill()
        process.wait(timeout=60)
        if process.returncode == -9:
            kills += 1
    assert kills >= KILLS and during_writes >= KILLS // 3, (kills, during_writes)
    final = start(str(directory), tmp_path / "resumed.pt")
    final.stdout.read()
    assert final.wait(timeout=600) == 0
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    result = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(expected[k], result[k]) for k in expected)
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*.tmp"))
    assert len(list(directory.glob("per_sample_state-*.pt"))) == 1
