"""
Streamed vs in-memory training on full Fashion-MNIST (issue 14's measurements, for what exists today).

* time per sample of ``fit(x, y)`` (the training set in memory, sliced per batch) against
  ``fit_generator(DataLoader)`` over a ``Dataset`` that reads each image from disk (a memory-mapped uint8 file made
  once from the official IDX files), for plain cross-entropy, HLDR with its FGSM pair made every batch
  (``regenerate="batch"``) and HLDR with its pairs precomputed (``regenerate="never"``: from the loader through
  :class:`~art_latent.data.IndexedDataset`, the pass that makes the pairs included), interleaved repetitions, median;
* the peak resident set of HLDR training through the DataLoader on the first 10,000 and on all 60,000 images (each
  in a fresh process): with pairs made per batch (the same number of steps on both sizes), and with precomputed
  pairs (one epoch over all the images, a small CNN) stored in host memory or in memory-mapped files
  (``sample_state_dir``), against the size of the stored pairs.

Run::

    OMP_NUM_THREADS=1 python benchmarks/streaming.py --json benchmarks/results/cpu-streaming.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from art_latent.data import IndexedDataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"


class DiskImages(Dataset):
    """Fashion-MNIST images read one by one from a memory-mapped uint8 file, scaled to [0, 1] per item."""

    def __init__(self, images: Path, labels: Path) -> None:
        self.images = np.load(images, mmap_mode="r")
        self.labels = np.load(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.asarray(self.images[index], dtype=np.float32) / 255.0)
        return image.unsqueeze(0), int(self.labels[index])


def _files(cache: Path) -> tuple[Path, Path]:
    from art_latent.data import read_idx

    images, labels = cache / "train-images.npy", cache / "train-labels.npy"
    if not images.exists():
        np.save(images, read_idx(DATA / "train-images-idx3-ubyte.gz").astype(np.uint8))
        np.save(labels, read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64))
    return images, labels


def _trainer(kind: str, seed: int = 0, model_name: str = "vgg16", state_dir: str | None = None) -> Any:
    from art.attacks.evasion import FastGradientMethod

    from art_latent import HLDRTrainer, LatentClassifier, LatentTrainer
    from art_latent.models import build_model

    torch.manual_seed(seed)
    kwargs = {"width": 0.25} if model_name == "vgg16" else {}
    model = build_model(model_name, in_channels=1, num_classes=10, input_size=28, **kwargs)
    clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, clip_values=(0.0, 1.0),
                           optimizer=torch.optim.NAdam(model.parameters(), lr=1e-3), device_type="cpu")
    if kind == "plain":
        return LatentTrainer(clf, seed=seed)
    return HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), budgets=(16 / 255,),
                       regenerate="batch" if kind == "hldr_online_fgsm" else "never", validation_attack=None,
                       seed=seed, sample_state_dir=state_dir)


def _time(args: argparse.Namespace, dataset: DiskImages) -> dict[str, Any]:
    n = args.steps * args.batch_size
    x = np.stack([dataset[i][0].numpy() for i in range(n)])
    y = dataset.labels[:n]
    results: dict[str, Any] = {}
    for kind in ("plain", "hldr_online_fgsm", "hldr_precomputed"):
        times: dict[str, list[float]] = {"in_memory": [], "streamed": []}
        for _ in range(args.repeats):
            for mode in times:
                trainer = _trainer(kind)
                started = time.perf_counter()
                if mode == "in_memory":
                    trainer.fit(x, y, batch_size=args.batch_size, nb_epochs=1, verbose=False)
                else:
                    subset = Subset(dataset, range(n))
                    loader = DataLoader(IndexedDataset(subset) if kind == "hldr_precomputed" else subset,
                                        batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
                    trainer.fit_generator(loader, nb_epochs=1, verbose=False)
                times[mode].append((time.perf_counter() - started) / n * 1000)
        medians = {mode: statistics.median(v) for mode, v in times.items()}
        results[kind] = {"ms_per_sample": medians, "all": times,
                         "streamed_over_in_memory": medians["streamed"] / medians["in_memory"]}
    return results


def _peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: Linux keeps that across ``fork`` and
    ``execve``, so a child started by this script would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_child(args: argparse.Namespace, images: Path, labels: Path) -> None:
    dataset = DiskImages(images, labels)
    if args.rss_kind == "hldr_online_fgsm":
        # The same number of steps on both sizes: samples drawn from the whole first n images, one epoch over them.
        indices = np.random.default_rng(0).choice(args.rss_child, args.rss_steps * args.batch_size, replace=False)
        loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=args.batch_size, shuffle=True)
        _trainer("hldr_online_fgsm").fit_generator(loader, nb_epochs=1, verbose=False)
        print(json.dumps({"max_rss_mib": _peak_rss_mib()}))
        return
    # Precomputed pairs of all n images (one epoch over them), in host memory or memory-mapped files.
    loader = DataLoader(IndexedDataset(Subset(dataset, range(args.rss_child))), batch_size=args.batch_size,
                        shuffle=True)
    with tempfile.TemporaryDirectory() as state_dir:
        trainer = _trainer("hldr_precomputed", model_name="small_cnn",
                           state_dir=state_dir if args.rss_kind == "hldr_precomputed_mmap" else None)
        stored: dict[str, int] = {}
        original = trainer.optimization_step

        def step(batch: Any) -> Any:
            if not stored and trainer._samples is not None and trainer._samples.data is not None:
                stored.update({k: v.numel() * v.element_size() for k, v in trainer._samples.data.items()})
            return original(batch)

        trainer.optimization_step = step
        trainer.fit_generator(loader, nb_epochs=1, verbose=False)
    print(json.dumps({"max_rss_mib": _peak_rss_mib(),
                      "stored_mib": sum(stored.values()) / 2**20,
                      "stored": {k: v / 2**20 for k, v in stored.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="batches per timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--rss-steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    parser.add_argument("--_rss-child", dest="rss_child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_cache", dest="cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_rss-kind", dest="rss_kind", default="hldr_online_fgsm", help=argparse.SUPPRESS)
    parser.add_argument("--skip-timing", action="store_true", help="measure the resident sets only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rss_child is not None:
        cache = Path(args.cache)
        _rss_child(args, cache / "train-images.npy", cache / "train-labels.npy")
        return
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = _files(Path(tmp))
        dataset = DiskImages(images, labels)
        result: dict[str, Any] = {"timing": None if args.skip_timing else _time(args, dataset), "rss": {}}
        for kind in ("hldr_online_fgsm", "hldr_precomputed", "hldr_precomputed_mmap"):
            for n in (10_000, 60_000):
                out = subprocess.run([sys.executable, __file__, "--_rss-child", str(n), "--_cache", tmp,
                                      "--_rss-kind", kind, "--rss-steps", str(args.rss_steps), "--batch-size",
                                      str(args.batch_size)], capture_output=True, text=True, check=True)
                result["rss"].setdefault(kind, {})[n] = json.loads(out.stdout.strip().splitlines()[-1])
    # What HLDR's precomputed pairs (one budget) would hold in memory: x_pair as float32 per sample.
    result["precomputed_pairs_mib"] = {n: n * 784 * 4 / 2**20 for n in (10_000, 60_000)}
    result["settings"] = {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "machine": platform.machine()}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
