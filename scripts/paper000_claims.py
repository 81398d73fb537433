"""Paired, fold-by-fold comparisons behind paper 000's claims, from a finished ``art-latent benchmark`` run.

The benchmark's report gives every defense's gain over the undefended model. Paper 000's other claims compare two
defenses (HLDR against HGD, FIMR and AGNT) or one defense on the two pair sets (D_N against D); those differences are
paired by fold (every defense of a fold starts from the same weights and is tested on the same images), so this script
takes them fold by fold and gives the mean with its 95% t interval (``scipy.stats.t``).

.. code-block:: bash

   python scripts/paper000_claims.py benchmarks/results/paper000-fmnist-cpu

Writes ``claims.md`` and ``claims.json`` into the run's directory and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

#: (label, first (pair set, defense), second (pair set, defense)); the difference is first - second.
COMPARISONS = [
    ("HLDR - HGD", ("D", "HLDR"), ("D", "HGD")),
    ("HLDR - FIMR", ("D", "HLDR"), ("D", "FIMR")),
    ("HLDR - AGNT", ("D", "HLDR"), ("D", "AGNT")),
    ("HLDR (D_N) - AGNT", ("D_N", "HLDR"), ("D", "AGNT")),
    ("HLDR (D_N) - HLDR (D)", ("D_N", "HLDR"), ("D", "HLDR")),
    ("HGD (D_N) - HGD (D)", ("D_N", "HGD"), ("D", "HGD")),
    ("FIMR (D_N) - FIMR (D)", ("D_N", "FIMR"), ("D", "FIMR")),
    ("HLDR (D_N) - undefended", ("D_N", "HLDR"), ("D", "undefended")),
    ("HGD - undefended", ("D", "HGD"), ("D", "undefended")),
    ("Stability - undefended", ("D", "Stability"), ("D", "undefended")),
]


def _metrics(result: dict, eps_255: list[int], sigmas_255: list[int]) -> dict[str, float]:
    """The numbers compared for one defense of one fold."""
    out = {"clean": result["clean_accuracy"]}
    for attack in ("fgsm", "pgd"):
        out[f"{attack} AUC"] = result["auc"][attack]
        for eps, acc in zip(eps_255, result["accuracy"][attack], strict=True):
            if eps == 8:
                out[f"{attack} 8/255"] = acc
    out[f"noise {sigmas_255[-1]:g}/255"] = result["noise_accuracy"][-1]
    out["noise mean"] = float(np.mean(result["noise_accuracy"][1:]))
    return out


def _interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stats.sem(values))
    return mean, mean - half, mean + half


def claims(run_dir: Path) -> dict:
    """Paired differences over the folds of ``run_dir``."""
    config = json.loads((run_dir / "config.json").read_text())["config"]
    evaluation = config["evaluation"]
    eps_255, sigmas_255 = evaluation["eps_255"], evaluation["sigmas_255"]
    folds = [json.loads(p.read_text()) for p in sorted((run_dir / "folds").glob("fold_*.json"))]
    table: dict[str, dict[str, list[float]]] = {}
    for label, first, second in COMPARISONS:
        diffs: dict[str, list[float]] = {}
        for fold in folds:
            a = _metrics(fold["results"][first[0]][first[1]], eps_255, sigmas_255)
            b = _metrics(fold["results"][second[0]][second[1]], eps_255, sigmas_255)
            for key in a:
                diffs.setdefault(key, []).append(a[key] - b[key])
        table[label] = {key: list(_interval(v)) for key, v in diffs.items()}
    timing = {}
    for pair_set in ("D", "D_N"):
        for name in folds[0]["results"][pair_set]:
            ms = [fold["results"][pair_set][name]["timing"]["ms_per_sample"] for fold in folds]
            timing[f"{name} ({pair_set})"] = list(_interval(ms))
    return {"run": str(run_dir), "folds": len(folds), "paired": table, "ms_per_sample": timing}


def to_markdown(result: dict) -> str:
    """One row per comparison, one column per metric: mean [95% t interval]."""
    paired = result["paired"]
    keys = list(next(iter(paired.values())))
    lines = [
        f"Paired differences over {result['folds']} folds (mean [95% t interval]; accuracy as a fraction).",
        "",
        "| comparison | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for label, row in paired.items():
        cells = [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in (row[k] for k in keys)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the --out directory of a finished art-latent benchmark run")
    args = parser.parse_args()
    result = claims(args.run_dir)
    (args.run_dir / "claims.json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = to_markdown(result)
    (args.run_dir / "claims.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
