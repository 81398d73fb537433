"""
Plumbing shared by the examples (not an example itself): the command line, the bundled data, seeding, and writing
the result table. Everything that shows how to use art_latent stays in the examples.

Every example accepts

* ``--smoke``: tiny sizes (a few dozen images, one epoch, a smaller model): only checks that the example runs
  (``tests/test_examples.py`` does this for every example); its numbers mean nothing;
* ``--out DIR``: where the table (``<example>.txt``) and the plots (``<example>*.png``) go (default
  ``examples_output/``);
* ``--seed N``: the seed of everything random (default 0).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# --smoke sizes: enough images that every class and a few batches appear, few enough for seconds of work.
SMOKE_TRAIN = 64
SMOKE_TEST = 32


def parse_args(doc: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    """The examples' shared options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (a few dozen images, 1 epoch): checks that the example runs, in seconds")
    parser.add_argument("--out", type=Path, default=Path("examples_output"),
                        help="directory of the result table (.txt) and plots (.png); default examples_output/")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling, attacks and noise")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (one per training epoch otherwise)")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy (ART's random starts and ``fit`` shuffling) and torch (initial weights)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Data:
    """The bundled Fashion-MNIST subset, or its first few images in ``--smoke`` mode."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    nb_classes: int
    class_names: tuple[str, ...]
    description: str


def load_data(smoke: bool) -> Data:
    """
    ``art_latent.data.load_dataset("bundled")``: 3000 training and 1000 test images of Fashion-MNIST (28x28, in
    [0, 1], 10 classes, shuffled), shipped with the package. ``smoke`` keeps the first 64 and 32.
    """
    from art_latent.data import load_dataset

    data = load_dataset("bundled")
    n_train, n_test = (SMOKE_TRAIN, SMOKE_TEST) if smoke else (len(data.x_train), len(data.x_test))
    return Data(
        data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test],
        data.input_shape, data.nb_classes, tuple(data.class_names),
        f"bundled Fashion-MNIST subset ({n_train} train / {n_test} test images)",
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats are printed with 3 decimals."""
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Output:
    """Where an example writes: ``<out>/<name>.txt`` (the table and its settings) and ``<out>/<name>*.png``."""

    def __init__(self, out: Path, script: str) -> None:
        self.name = Path(script).stem
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def path(self, suffix: str) -> Path:
        """``<out>/<name><suffix>``, e.g. ``path("_accuracy.png")``."""
        return self.dir / f"{self.name}{suffix}"

    def write(self, settings: str, table: str, notes: str = "") -> Path:
        """Print the table and write it, with the settings it was made with, to ``<out>/<name>.txt``."""
        seconds = time.perf_counter() - self.started
        cpu = time.process_time() - self.cpu_started
        threads = torch.get_num_threads()
        device = "CUDA" if torch.cuda.is_available() else f"CPU, {threads} thread{'s' if threads > 1 else ''}"
        text = (f"{settings.strip()}\n\n{table.strip()}\n"
                + (f"\n{notes.strip()}\n" if notes.strip() else "")
                + f"\n(python {sys.version.split()[0]}, torch {torch.__version__}, {device}; {seconds:.0f} s wall, "
                  f"{cpu:.0f} s CPU, after the imports)\n")
        path = self.path(".txt")
        path.write_text(text)
        print()
        print(text, end="")
        print(f"Wrote {path}")
        return path


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends outside the axes stay in the file
    plt.close(fig)
    print(f"Wrote {path}")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_curves(
    budgets: list[float], curves: dict[str, list[float]], xlabel: str, title: str, path: Path
) -> Path:
    """Test accuracy against the attack budget, one line per model, saved to `path`."""
    fig, ax = pyplot().subplots(figsize=(6.4, 3.4))
    for name, curve in curves.items():
        ax.plot(budgets, curve, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # never over the data
    fig.tight_layout()
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def small_cnn_classifier(data: Data, state: dict | None = None, sgd: bool = True) -> Any:
    """
    A SmallCNN ``LatentClassifier`` for `data` (optionally loading `state`): SGD momentum 0.9, lr 0.01 for
    fine-tuning, or Nadam 1e-3 for pre-training (``sgd=False``).
    """
    from art_latent import LatentClassifier
    from art_latent.models import SmallCNN

    model = SmallCNN(in_channels=1, num_classes=data.nb_classes)
    if state is not None:
        model.load_state_dict(state)
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if sgd
                 else torch.optim.NAdam(model.parameters(), lr=1e-3))
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                            optimizer=optimizer, clip_values=(0.0, 1.0))


def show_progress(quiet: bool = False) -> None:
    """
    One line per training epoch on stderr, with the time since the start (the trainers' one-line epoch summary, and
    their other information, on the ``art_latent.trainers`` loggers): the examples run for minutes, and this says
    where they are.
    """
    started = time.perf_counter()

    class Elapsed(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"[{time.perf_counter() - started:6.0f} s] {record.getMessage()}"

    handler = logging.StreamHandler()
    handler.setFormatter(Elapsed())
    trainer_log = logging.getLogger("art_latent.trainers")  # the package: the epoch line is epoch_loop's
    trainer_log.handlers = [handler]
    trainer_log.propagate = False
    trainer_log.setLevel(logging.WARNING if quiet else logging.INFO)


def start(doc: str | None, script: str) -> tuple[argparse.Namespace, Data, Output]:
    """Every example's preamble: parse the command line, seed everything, load the data, prepare the output."""
    args = parse_args(doc)
    show_progress(args.quiet)
    seed_everything(args.seed)
    return args, load_data(args.smoke), Output(args.out, script)
