"""Data-parallel training: two gloo processes on CPU reach the weights of one process on the combined batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import ddp_resume_worker, ddp_worker, hldr_weights_after_training, sharded_loader

from art_latent.trainers.distributed import DistributedContext, convert_sync_batchnorm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_every_rank_matches(out_dir, reference, ref_history) -> None:
    """Both processes of ``ddp_worker`` ended with the one-process weights and last loss."""
    for rank in range(2):
        result = torch.load(out_dir / f"rank{rank}.pt", weights_only=False)
        for name, value in reference.items():
            torch.testing.assert_close(result["weights"][name], value, atol=1e-5, rtol=0)
        assert result["history"][-1]["loss"] == pytest.approx(ref_history[-1]["loss"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_combined_batch(tiny_data, tmp_path):
    x, y = tiny_data
    reference, ref_history = hldr_weights_after_training(x, y, batch_size=16)
    mp.spawn(ddp_worker, args=(2, _free_port(), x, y, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in results:
        for name, value in reference.items():
            torch.testing.assert_close(result["weights"][name], value, atol=1e-5, rtol=0)
        # metrics are all-reduced: both ranks log the single-process history
        assert result["history"][-1]["loss"] == pytest.approx(ref_history[-1]["loss"], rel=1e-5)
    assert torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_two_processes_with_pairs_made_every_batch_match_one_process(tiny_data, tmp_path, monkeypatch):
    # Each sample becomes one row per budget; the gradient weights must count samples, as the global batch does.
    x, y = tiny_data
    reference, ref_history = hldr_weights_after_training(x, y, batch_size=16, regenerate="batch")
    monkeypatch.setenv("ART_LATENT_TEST_REGENERATE", "batch")  # read by the spawned workers
    mp.spawn(ddp_worker, args=(2, _free_port(), x, y, str(tmp_path)), nprocs=2, join=True)
    _assert_every_rank_matches(tmp_path, reference, ref_history)


@pytest.mark.slow
def test_two_processes_reading_their_shards_from_loaders_match_one_process(tiny_data, tmp_path, monkeypatch):
    # DistributedSampler without shuffling gives rank r the samples r, r + 2, ...: the two batches of 8 make up
    # the one-process batch of 16 in order, and each process reads only its half.
    x, y = tiny_data
    reference, ref_history = hldr_weights_after_training(x, y, batch_size=16, loader=sharded_loader(x, y, 16))
    monkeypatch.setenv("ART_LATENT_TEST_LOADER", "1")  # read by the spawned workers
    mp.spawn(ddp_worker, args=(2, _free_port(), x, y, str(tmp_path)), nprocs=2, join=True)
    _assert_every_rank_matches(tmp_path, reference, ref_history)


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_to_the_uninterrupted_weights(tiny_data, tmp_path):
    x, y = tiny_data[0][:64], tiny_data[1][:64]
    runs = {}
    for name, kill_at in (("reference", None), ("killed", 12 + 5)):  # 3 x 64 pairs / 16 per global step: epoch 2
        out = tmp_path / name
        out.mkdir()
        mp.spawn(ddp_resume_worker, args=(2, _free_port(), x, y, str(out), kill_at, False), nprocs=2, join=True)
        runs[name] = out
    state = torch.load(runs["killed"] / "ckpt" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["mid_epoch"]["step"] == 4
    assert not (runs["killed"] / "rank0.pt").exists()
    mp.spawn(ddp_resume_worker, args=(2, _free_port(), x, y, str(runs["killed"]), None, True), nprocs=2, join=True)
    for rank in range(2):
        reference = torch.load(runs["reference"] / f"rank{rank}.pt", weights_only=False)
        resumed = torch.load(runs["killed"] / f"rank{rank}.pt", weights_only=False)
        for name, value in reference["weights"].items():
            assert torch.equal(resumed["weights"][name], value), name
        # the epoch metrics of the resumed epoch span both processes' steps before and after the interruption
        assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in reference["history"]],
                                                                        rel=1e-6)


def test_single_process_is_not_distributed():
    assert DistributedContext.resolve("auto", torch.device("cpu")) is None
    assert DistributedContext.resolve(False, torch.device("cpu")) is None
    with pytest.raises(RuntimeError, match="torchrun"):
        DistributedContext.resolve(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="`distributed`"):
        DistributedContext.resolve("yes", torch.device("cpu"))


def test_sync_batchnorm_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
