"""
Layer Sustainability Analysis (LSA) finds the most vulnerable layers; AT-LR regularizes them during adversarial
training (Khalooei, Homayounpour & Amirmazlaghani, paper 004).

Algorithm 2 of the paper, in small:

1. pre-train a SmallCNN normally;
2. ``LayerSustainabilityAnalysis``: for 512 training images and their perturbed versions (PGD-Linf at eps 0.1 and
   four statistical noises), the relative error ``|phi_l(x) - phi_l(x')| / |phi_l(x)|`` of every learnable layer;
   the layers whose mean error exceeds ``mu + eta * sigma`` are the most vulnerable (MVL);
3. fine-tune two copies of the pre-trained weights with the same attack and batches: adversarial training alone
   (``ATLRTrainer(gamma=0)``, AT-FAST: FGSM from a random start, Wong et al. 2020) and AT-LR (``gamma=1`` on the MVL
   layers);
4. compare their accuracies under FGSM and PGD-10 at the budgets 0, 1/30, 2/30, 0.1 (the paper's MNIST list scaled
   by 1/3 for Fashion-MNIST), the paper's R&G score (sum of the accuracies in percent), and the relative error of
   the regularized layers under PGD after training (the paper's Fig. 5).

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), SmallCNN (two conv units and a
dense layer, BatchNorm, ELU), Adam 1e-3, batch 64.

Run: ``python examples/lsa_atlr.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores); ``--smoke`` runs it on
a few dozen images in seconds.
"""

import copy

import numpy as np
import torch
from _common import markdown_table, start
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

from art_latent import ATLRTrainer, LatentClassifier, LatentTrainer, LayerSustainabilityAnalysis
from art_latent.analysis import accuracy_vs_eps, rg_score
from art_latent.models import SmallCNN
from art_latent.trainers.atlr import make_fast_attack

args, data, out = start(__doc__, __file__)
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = (1, 1) if args.smoke else (4, 4)
TRAIN_EPS = 0.1
ETA = 0.5
BUDGETS = [0.0, 1 / 30, 2 / 30, 0.1]
n_lsa = min(512, len(data.x_train))


def make_classifier(state=None) -> LatentClassifier:
    model = SmallCNN(in_channels=1, num_classes=data.nb_classes)
    if state is not None:
        model.load_state_dict(state)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), clip_values=(0.0, 1.0))


def pgd(clf: LatentClassifier, eps: float, random_start: bool = True) -> ProjectedGradientDescent:
    return ProjectedGradientDescent(clf, eps=eps, eps_step=eps / 4, max_iter=7 if random_start else 10,
                                    num_random_init=int(random_start), batch_size=256, verbose=False)


# 1. A normally trained model (Algorithm 2, step 1).
clf = make_classifier()
LatentTrainer(clf, seed=args.seed).fit(data.x_train, data.y_train, nb_epochs=PRETRAIN_EPOCHS, batch_size=64,
                                       verbose=False)
pretrained = copy.deepcopy(clf.model.state_dict())

# 2. The analysis (Algorithm 1) on random training images.
index = np.random.default_rng(args.seed).permutation(len(data.x_train))[:n_lsa]
lsa = LayerSustainabilityAnalysis(clf).run(
    data.x_train[index],
    attack={"PGD 0.1": pgd(clf, TRAIN_EPS)},
    noise=["gaussian", "salt", "pepper", "speckle"],
    y=data.y_train[index],
)
lsa.plot(out.path("_lsa.png"), title=f"LSA of the pre-trained SmallCNN ({n_lsa} training images)", eta=ETA)
lsa_rows = [[layer] + [f"{lsa.layer_mean(p)[i]:.3f} +- {lsa.layer_std(p)[i]:.3f}" for p in lsa.perturbations]
            for i, layer in enumerate(lsa.layers)]
lsa_rows.append(["MVL (eta 0.5)"] + [", ".join(lsa.most_vulnerable(ETA, p)) or "none" for p in lsa.perturbations])
lsa_table = markdown_table(["layer", *lsa.perturbations], lsa_rows)
# The layers to regularize: PGD's MVL list, or its single most vulnerable layer when none passes the cut-off
# (what ATLRTrainer(layers="lsa") does by itself at the start of fit).
layers = lsa.most_vulnerable(ETA) or [lsa.layers[int(np.argmax(lsa.layer_mean()))]]
print("Most vulnerable layers (PGD):", layers)

# 3. AT and AT-LR from the same weights, with the same attack and batches (Algorithm 3).
rows, errors = [], {}
for name, gamma in (("AT-FAST", 0.0), ("AT-FAST-LR", 1.0)):
    clf = make_classifier(pretrained)
    trainer = ATLRTrainer(clf, make_fast_attack(clf, TRAIN_EPS), layers=layers, gamma=gamma, validation_attack=None,
                          seed=args.seed)
    history = trainer.fit(data.x_train, data.y_train, nb_epochs=FINETUNE_EPOCHS, batch_size=64, verbose=False)
    fgsm_curve = accuracy_vs_eps(clf, data.x_test, data.y_test,
                                 lambda c, e: FastGradientMethod(c, eps=e, batch_size=256), BUDGETS)
    pgd_curve = accuracy_vs_eps(clf, data.x_test, data.y_test, lambda c, e: pgd(c, e, random_start=False), BUDGETS)
    # 4. The relative error of the regularized layers after training (the paper's Fig. 5), PGD on test images.
    after = LayerSustainabilityAnalysis(clf, layers=layers).run(
        data.x_test[:n_lsa], attack={"PGD": pgd(clf, TRAIN_EPS)}, y=data.y_test[:n_lsa])
    errors[name] = after.layer_mean()
    rows.append([name, ", ".join(trainer.layers) if gamma > 0 else "-", " ".join(f"{a:.3f}" for a in fgsm_curve),
                 f"{rg_score(fgsm_curve):.1f}", " ".join(f"{a:.3f}" for a in pgd_curve),
                 f"{rg_score(pgd_curve):.1f}", " ".join(f"{e:.3f}" for e in errors[name]),
                 f"{history[-1]['adv_accuracy']:.3f}"])
    print(f"{name}: R&G FGSM {rows[-1][3]}, PGD {rows[-1][5]}")

table = markdown_table(["training", "regularized layers", "FGSM accuracies", "R&G FGSM", "PGD-10 accuracies",
                        "R&G PGD", "rel. error of the MVL (PGD, test)", "train acc. (adversarial)"], rows)
settings = (
    f"LSA + AT-LR: {data.description}; SmallCNN; seed {args.seed}.\n"
    f"Pre-training {PRETRAIN_EPOCHS} epochs (Adam 1e-3, batch 64). LSA on {n_lsa} training images: PGD-Linf eps "
    f"{TRAIN_EPS} (7 steps of eps/4, random start) and four statistical noises; eta {ETA}.\n"
    f"Fine-tuning {FINETUNE_EPOCHS} epochs from the pre-trained weights (Adam 1e-3, batch 64), training attack FAST "
    f"(FGSM from a random start, step 1.25 eps) at eps {TRAIN_EPS}; AT-LR gamma 1.\n"
    f"Evaluation on {len(data.x_test)} test images at eps {', '.join(f'{e:.4g}' for e in BUDGETS)} (FGSM; PGD 10 "
    f"steps of eps/4, no random start); R&G = sum of the accuracies in percent."
)
out.write(settings, "Relative error per layer of the pre-trained model (mean +- std over the images):\n\n"
          + lsa_table + "\n\nAdversarial training without and with the layer-wise regularizer:\n\n" + table)
