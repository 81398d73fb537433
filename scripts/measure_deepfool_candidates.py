"""
Deep Defense's DeepFool with all classes vs the top-k candidates (paper 003), on trained MNIST MLPs of
``scripts/reproduce_paper003.py --candidates`` (``benchmarks/results/paper003_candidates``):

* on the first 256 test images, DeepFool as Deep Defense trains with it (labels, 5 steps, overshoot 0.02, no graph)
  with candidates None / 3 / 2: the regularizer (c 15, d 5), the ratios ||r|| / ||x||, the fooled rate;
* how often the class DeepFool chooses with all candidates lies outside the top-k clean logits at some step;
* every Deep Defense model's FGSM accuracy at the eps_ref of the all-classes model of its seed (one common budget);
* the time of one Deep Defense (and one plain) fine-tuning epoch from the seed-0 reference, interleaved, 3 repeats.

Run ``OMP_NUM_THREADS=1 python scripts/measure_deepfool_candidates.py`` after the runs; prints and writes
``OUT/deepfool_candidates.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_paper003 as repro  # noqa: E402  (the runs' data, models and names)

from art_latent.analysis.deepfool_metrics import accuracy_at_eps_ref  # noqa: E402
from art_latent.regularizers.deepfool import deep_defense_regularizer, deepfool, perturbation_ratio  # noqa: E402
from art_latent.trainers.base import LatentTrainer  # noqa: E402
from art_latent.trainers.deep_defense import DeepDefenseTrainer  # noqa: E402

KS = (None, 3, 2)


def chosen_ranks(model: torch.nn.Module, x: torch.Tensor, max_iter: int = 5,
                 overshoot: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank (0 = highest other clean logit) of the class all-candidates DeepFool steps towards, per sample and step
    (-1 once stopped), and the perturbation: the loop of :func:`deepfool` for samples leaving their clean
    prediction."""
    logits0 = model(x).detach()
    pred = logits0.argmax(1)
    order = logits0.scatter(1, pred[:, None], float("-inf")).argsort(1, descending=True)[:, :-1]
    total, active = torch.zeros_like(x), torch.ones(len(x), dtype=torch.bool)
    ranks = torch.full((len(x), max_iter), -1)
    for step in range(max_iter):
        x_t = (x + total).requires_grad_(True)
        logits = model(x_t)
        f = logits.gather(1, order) - logits.gather(1, pred[:, None])
        grads = torch.stack([torch.autograd.grad(f[:, j].sum(), x_t, retain_graph=True)[0] for j in range(9)], 1)
        rank = (f.detach().abs() / (grads.flatten(2).square().sum(2).sqrt() + 1e-12)).argmin(1)
        w = grads[torch.arange(len(x)), rank]
        r = (f.detach().gather(1, rank[:, None]).abs() / (w.flatten(1).square().sum(1, keepdim=True) + 1e-12))
        total = total + torch.where(active[:, None, None, None], r[:, :, None, None] * w, torch.zeros_like(w))
        ranks[active, step] = rank[active]
        with torch.no_grad():
            active = active & (model(x + (1 + overshoot) * total).argmax(1) == pred)
    return ranks, (1 + overshoot) * total.detach()


def load(out: Path, key: str) -> torch.nn.Module:
    net = repro.build_model("mlp", 0)
    net.load_state_dict(torch.load(out / "weights" / f"{key}.pt", map_location="cpu", weights_only=True))
    return net.eval()


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/paper003_candidates")
    parser.add_argument("--c", type=float, default=15.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    out = Path(args.out)
    data = repro.load_data("mnist", repro.parse_args(["--out", str(out)]))
    x_te, y_te = data["test"]
    x, y = torch.from_numpy(x_te[:256]), torch.from_numpy(y_te[:256])
    result: dict[str, Any] = {"n": 256, "c": args.c, "d": repro.D, "models": {}, "fgsm_at_common_eps_ref": {}}
    for name in ("reference", "deep_defense"):
        model = load(out, repro.run_key("mnist", "mlp", name, 0, args.c, args.lr))
        correct = model(x).argmax(1) == y
        per_k: dict[str, Any] = {"clean_correct": int(correct.sum())}
        for k in KS:
            res = deepfool(model, x, labels=y, max_iter=5, overshoot=0.02, candidates=k, create_graph=False)
            ratio = perturbation_ratio(res.perturbation, x).detach()
            per_k[str(k)] = {"regularizer": float(deep_defense_regularizer(ratio, correct, args.c, repro.D)),
                             "ratio_mean_correct": float(ratio[correct].mean()),
                             "r_norm_mean_correct": float(res.perturbation[correct].flatten(1).norm(dim=1).mean()),
                             "fooled_rate_correct": float(res.fooled[correct].float().mean()), "_ratio": ratio}
        full = per_k["None"]["_ratio"][correct]
        ranks, own = chosen_ranks(model, x)
        ranks = ranks[correct]
        own_ratio = perturbation_ratio(own, x)[correct]
        per_k["own_loop_vs_deepfool_ratio_max_rel_diff"] = float((own_ratio / full - 1.0).abs().max())
        for k in KS[1:]:
            rel = (per_k[str(k)]["_ratio"][correct] / full - 1.0).abs()
            per_k[str(k)].update(ratio_rel_diff_median=float(rel.median()), ratio_rel_diff_max=float(rel.max()),
                                 outside_topk_some_step=float((ranks >= k).any(1).float().mean()),
                                 outside_topk_first_step=float((ranks[:, 0] >= k).float().mean()))
        for k in KS:
            del per_k[str(k)]["_ratio"]
        per_k["chosen_rank_histogram"] = np.bincount(ranks[ranks >= 0].numpy(), minlength=9).tolist()
        result["models"][name + " s0 (" + ("all classes" if name == "deep_defense" else "plain") + ")"] = per_k
    for seed in (0, 1, 2):
        ref_eval = out / "eval" / f"mnist_mlp_c{args.c:g}_lr{args.lr:g}_s{seed}.json"
        eps = json.loads(ref_eval.read_text(encoding="utf-8"))["eps_ref"]
        row: dict[str, Any] = {"eps_ref_all_classes": eps}
        for k in KS:
            key = repro.run_key("mnist", "mlp", "deep_defense", seed, args.c, args.lr, k)
            clf = repro.make_classifier(load(out, key), repro.FT_LR)
            accs = accuracy_at_eps_ref(clf, x_te, y_te, eps, repro.FRACTIONS)
            row[str(k)] = {f"{f:g}": a for f, a in accs.items()}
        result["fgsm_at_common_eps_ref"][f"s{seed}"] = row
    ref_key = repro.run_key("mnist", "mlp", "reference", 0)
    epoch_s: dict[str, list[float]] = {str(k): [] for k in ("plain", *KS)}
    for _ in range(3):
        for k in ("plain", *KS):
            clf = repro.make_classifier(load(out, ref_key), args.lr)
            trainer = (LatentTrainer(clf, seed=0) if k == "plain"
                       else DeepDefenseTrainer(clf, lam=repro.LAM, c=args.c, d=repro.D, seed=0, candidates=k))
            start = time.perf_counter()
            trainer.fit(*data["train"], nb_epochs=1, batch_size=repro.BATCH, verbose=False)
            epoch_s[str(k)].append(time.perf_counter() - start)
    result["epoch_s_median_of_3"] = {k: float(np.median(v)) for k, v in epoch_s.items()}
    result["epoch_s_all"] = epoch_s
    text = json.dumps(result, indent=1)
    print(text)
    (out / "deepfool_candidates.json").write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
