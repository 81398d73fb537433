"""
Streamed vs in-memory training on full Fashion-MNIST (issue 14's measurements, for what exists today).

* step time of ``fit(x, y)`` (the training set in memory, sliced per batch) against ``fit_generator(DataLoader)``
  over a ``Dataset`` that reads each image from disk (a memory-mapped uint8 file made once from the official IDX
  files), for plain cross-entropy and HLDR with its FGSM pair made every batch (the mode a loader gives precomputing
  methods), interleaved repetitions, median;
* the peak resident set of HLDR training through the DataLoader on the first 10,000 and on all 60,000 images (each
  in a fresh process; the same number of steps), against what precomputed pairs would take in memory.

Run::

    OMP_NUM_THREADS=1 python benchmarks/streaming.py --json benchmarks/results/cpu-streaming.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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


def _trainer(kind: str, seed: int = 0) -> Any:
    from art.attacks.evasion import FastGradientMethod

    from art_latent import HLDRTrainer, LatentClassifier, LatentTrainer
    from art_latent.models import build_model

    torch.manual_seed(seed)
    model = build_model("vgg16", in_channels=1, num_classes=10, input_size=28, width=0.25)
    clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, clip_values=(0.0, 1.0),
                           optimizer=torch.optim.NAdam(model.parameters(), lr=1e-3), device_type="cpu")
    if kind == "plain":
        return LatentTrainer(clf, seed=seed)
    return HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), budgets=(16 / 255,), regenerate="batch",
                       validation_attack=None, seed=seed)


def _time(args: argparse.Namespace, dataset: DiskImages) -> dict[str, Any]:
    n = args.steps * args.batch_size
    x = np.stack([dataset[i][0].numpy() for i in range(n)])
    y = dataset.labels[:n]
    results: dict[str, Any] = {}
    for kind in ("plain", "hldr_online_fgsm"):
        times: dict[str, list[float]] = {"in_memory": [], "streamed": []}
        for _ in range(args.repeats):
            for mode in times:
                trainer = _trainer(kind)
                started = time.perf_counter()
                if mode == "in_memory":
                    trainer.fit(x, y, batch_size=args.batch_size, nb_epochs=1, verbose=False)
                else:
                    loader = DataLoader(Subset(dataset, range(n)), batch_size=args.batch_size, shuffle=True,
                                        num_workers=args.workers)
                    trainer.fit_generator(loader, nb_epochs=1, verbose=False)
                times[mode].append((time.perf_counter() - started) / n * 1000)
        medians = {mode: statistics.median(v) for mode, v in times.items()}
        results[kind] = {"ms_per_sample": medians, "all": times,
                         "streamed_over_in_memory": medians["streamed"] / medians["in_memory"]}
    return results


def _rss_child(args: argparse.Namespace, images: Path, labels: Path) -> None:
    # The same number of steps on both sizes: samples drawn from the whole first n images, one epoch over them.
    dataset = DiskImages(images, labels)
    indices = np.random.default_rng(0).choice(args.rss_child, args.rss_steps * args.batch_size, replace=False)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=args.batch_size, shuffle=True, num_workers=0)
    _trainer("hldr_online_fgsm").fit_generator(loader, nb_epochs=1, verbose=False)
    print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


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
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rss_child is not None:
        cache = Path(args.cache)
        _rss_child(args, cache / "train-images.npy", cache / "train-labels.npy")
        return
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = _files(Path(tmp))
        dataset = DiskImages(images, labels)
        result: dict[str, Any] = {"timing": _time(args, dataset), "rss": {}}
        for n in (10_000, 60_000):
            out = subprocess.run([sys.executable, __file__, "--_rss-child", str(n), "--_cache", tmp,
                                  "--rss-steps", str(args.rss_steps), "--batch-size", str(args.batch_size)],
                                 capture_output=True, text=True, check=True)
            result["rss"][n] = json.loads(out.stdout.strip().splitlines()[-1])["max_rss_mib"]
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
