"""
Compare defenses with ``RobustnessReport``: HLDR and its baselines fine-tuned from the same pre-trained weights.

One VGG-16 is pre-trained on half of the training images; four copies of its weights are then fine-tuned on the
other half, each for the same number of optimizer steps (paper 000's protocol, Schwartz & Ditzler 2021):

* ``undefended``: plain cross-entropy fine-tuning (``LatentTrainer``);
* ``HLDR``: ``HLDRTrainer``, FGSM pairs at 0, 16/255 and 32/255 made on the pre-trained model, xi = 0.25;
* ``FIMR``: ``FIMRTrainer``, cross-entropy + Fisher-trace penalty (zeta = 0.0025), on HLDR's benign members;
* ``AGNT``: ``GaussianNoiseTrainer``, cross-entropy on Gaussian-noise inputs (sigma = 32/255).

(``StabilityTrainer``, the fourth baseline of the paper, is one more entry in the same loop.) ``RobustnessReport``
then runs one attack suite on all four: white-box FGSM and PGD (ART's attacks on the on-device
path), a transfer attack (PGD examples of the undefended model shown to every model), Gaussian noise, the per-layer
perturbation error, and the gradient-masking check; it writes JSON, Markdown and PNG plots.

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), the paper's VGG-16 layout at
width 0.125 (BatchNorm, ELU). The report's Markdown and plots go to ``<out>/compare_defenses/``.

Run: ``python examples/compare_defenses.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores);
``--smoke`` runs it on a few dozen images in seconds.
"""

import copy

import numpy as np
import torch
from _common import markdown_table, start
from art.attacks.evasion import FastGradientMethod

from art_latent import (
    FIMRTrainer,
    GaussianNoiseTrainer,
    HLDRTrainer,
    LatentClassifier,
    LatentTrainer,
    RobustnessReport,
)
from art_latent.models import VGG

args, data, out = start(__doc__, __file__)
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = (1, 1) if args.smoke else (5, 2)
FINETUNE_LR = 2e-4
BUDGETS = (0.0, 16 / 255, 32 / 255)
n_eval = min(500, len(data.x_test))


def make_classifier(state=None) -> LatentClassifier:
    model = VGG(in_channels=1, num_classes=data.nb_classes, width=0.125, input_size=28)
    lr = 1e-3
    if state is not None:  # fine-tuning, at a lower rate: at 1e-3 the test accuracy jumps from epoch to epoch
        model.load_state_dict(state)
        lr = FINETUNE_LR
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                            optimizer=torch.optim.NAdam(model.parameters(), lr=lr), clip_values=(0.0, 1.0))


half = len(data.x_train) // 2
x_pre, y_pre, x_ft, y_ft = data.x_train[:half], data.y_train[:half], data.x_train[half:], data.y_train[half:]
clf = make_classifier()
LatentTrainer(clf, seed=args.seed).fit(x_pre, y_pre, nb_epochs=PRETRAIN_EPOCHS, batch_size=64, verbose=False)
pretrained = copy.deepcopy(clf.model.state_dict())

# Every method makes len(BUDGETS) * FINETUNE_EPOCHS passes over the fine-tuning images: the same number of steps.
steps_epochs = len(BUDGETS) * FINETUNE_EPOCHS
x_rep, y_rep = np.concatenate([x_ft] * len(BUDGETS)), np.concatenate([y_ft] * len(BUDGETS))
classifiers = {}
for name in ("undefended", "HLDR", "FIMR", "AGNT"):
    clf = make_classifier(pretrained)
    x, y, epochs = x_ft, y_ft, steps_epochs
    if name == "undefended":
        trainer = LatentTrainer(clf, seed=args.seed)
    elif name == "HLDR":
        trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), xi=0.25, budgets=BUDGETS,
                              validation_attack=None, seed=args.seed)
        epochs = FINETUNE_EPOCHS  # its set holds len(BUDGETS) pairs per image
    elif name == "FIMR":
        trainer = FIMRTrainer(clf, zeta=0.0025, seed=args.seed)
        x, y, epochs = x_rep, y_rep, FINETUNE_EPOCHS  # the benign members of HLDR's pairs
    else:
        trainer = GaussianNoiseTrainer(clf, sigma=32 / 255, seed=args.seed)
    history = trainer.fit(x, y, nb_epochs=epochs, batch_size=64, verbose=False)
    print(f"{name}: {epochs} epochs on {len(x)} rows, {sum(h['time_s'] for h in history):.1f} s, "
          f"training accuracy {history[-1]['accuracy']:.3f}")
    classifiers[name] = clf

report = RobustnessReport(
    attacks=("fgsm", "pgd", "transfer", "noise"),
    eps_list=[0.0, 8 / 255, 16 / 255],
    sigma_list=[0.0, 32 / 255, 64 / 255],
    pgd_max_iter=10,
    pgd_restarts=1,
    perturbation_eps=8 / 255,
    seed=args.seed,
    verbose=False,
    **({"square_queries": 50, "check_samples": 24} if args.smoke else {}),
)
results = report.evaluate(classifiers, data.x_test[:n_eval], data.y_test[:n_eval], reference="undefended")
paths = report.write(results, out.dir / out.name)  # report.json, report.md, accuracy_vs_eps.png, ...

k8 = report.eps_list.index(8 / 255)
rows = []
for name, r in results["models"].items():
    acc = r["accuracy"]
    rows.append([name, r["clean_accuracy"], acc["fgsm"][k8], acc["pgd"][k8], acc["transfer"][k8],
                 r["noise_accuracy"][-1], r["auc"]["pgd"], "; ".join(r["flags"]) or "none"])
table = markdown_table(["model", "clean", "FGSM 8/255", "PGD 8/255", "transfer 8/255", "noise 64/255",
                        "PGD AUC", "gradient-masking flags"], rows)
settings = (
    f"Defenses compared with RobustnessReport: {data.description}; VGG-16 width 0.125; seed {args.seed}.\n"
    f"Pre-training {PRETRAIN_EPOCHS} epochs on {len(x_pre)} images (Nadam 1e-3, batch 64); every defense fine-tunes "
    f"a copy for {steps_epochs * len(x_ft)} rows ({steps_epochs} passes over {len(x_ft)} images; Nadam "
    f"{FINETUNE_LR:g}, batch 64).\n"
    f"Evaluation on the first {n_eval} test images: PGD {report.pgd_max_iter} steps of {report.pgd_step_ratio:g} "
    f"eps with {report.pgd_restarts} random start; transfer = PGD examples of 'undefended'; PGD AUC over eps "
    f"0..16/255 (normalized). Full report: {out.name}/report.md."
)
out.write(settings, table)
print("Report files:", ", ".join(str(p) for p in paths))
