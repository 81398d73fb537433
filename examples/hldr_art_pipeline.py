"""
HLDR dropped into an existing ART pipeline.

The starting point is what an ART user already has: a plain ``PyTorchClassifier``, trained with ART's ``fit``,
attacked with ART's ``FastGradientMethod`` and ``ProjectedGradientDescent``, and scored with ``art.metrics``
(``adversarial_accuracy``, ``empirical_robustness``). The defense is one more object: art_latent's ``HLDRTrainer``
(hidden-layer latent disparity regularization, Schwartz & Ditzler, IJCNN 2021) takes the same classifier and an
ART attack and fine-tunes the classifier in place; the attacks and metrics run on it unchanged afterwards.

The protocol is the paper's, in small: pre-train on half of the training images, then fine-tune two copies of the
pre-trained weights on the other half, one with ART's own ``fit`` (the undefended control, for 3x the epochs so both
take the same number of optimizer steps) and one with HLDR (pairs made by FGSM at 0, 16/255 and 32/255 on the
pre-trained model, xi = 0.25, Nadam as in the paper). Fine-tuning uses a 5x lower learning rate than pre-training:
at the pre-training rate, the test accuracy of this small model jumps by several points from one epoch to the next,
which would drown the difference between the two copies.

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), the paper's VGG-16 layout at
width 0.125 (BatchNorm, ELU; 236k parameters).

Run: ``python examples/hldr_art_pipeline.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores);
``--smoke`` runs it on a few dozen images in seconds.
"""

import copy

import numpy as np
import torch
from _common import markdown_table, plot_accuracy_curves, start
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from art.metrics import adversarial_accuracy, empirical_robustness

from art_latent import HLDRTrainer
from art_latent.models import VGG

args, data, out = start(__doc__, __file__)
WIDTH = 0.125
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = (1, 1) if args.smoke else (6, 2)
FINETUNE_LR = 2e-4
BUDGETS = (0.0, 16 / 255, 32 / 255)  # HLDR's fine-tuning pairs (the paper's set D)
EVAL_EPS = 8 / 255
CURVE_EPS_255 = [0, 2, 4, 8, 16, 32]
n_pgd = min(500, len(data.x_test))  # test images for the iterative attacks (PGD, empirical_robustness)


def make_classifier(state=None, lr: float = 1e-3) -> PyTorchClassifier:
    """The user's ART classifier: nothing art_latent-specific."""
    model = VGG(in_channels=1, num_classes=data.nb_classes, width=WIDTH, input_size=28)
    if state is not None:
        model.load_state_dict(state)
    return PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=data.input_shape,
        nb_classes=data.nb_classes,
        optimizer=torch.optim.NAdam(model.parameters(), lr=lr),
        clip_values=(0.0, 1.0),
    )


def evaluate(clf: PyTorchClassifier) -> dict:
    """The user's ART evaluation: ART attacks and ART metrics."""
    x, y = data.x_test, data.y_test
    curve = []
    for eps in CURVE_EPS_255:  # FGSM accuracy over budgets (8/255 included)
        x_adv = x if eps == 0 else FastGradientMethod(clf, eps=eps / 255, batch_size=256).generate(x, y=y)
        curve.append(float(np.mean(clf.predict(x_adv).argmax(1) == y)))
    fgsm = FastGradientMethod(clf, eps=EVAL_EPS, batch_size=256)
    pgd = ProjectedGradientDescent(clf, eps=EVAL_EPS, eps_step=EVAL_EPS / 4, max_iter=10, batch_size=256,
                                   verbose=False)
    return {
        "clean": curve[0],
        "fgsm": curve[CURVE_EPS_255.index(round(EVAL_EPS * 255))],
        "pgd": float(np.mean(clf.predict(pgd.generate(x[:n_pgd], y=y[:n_pgd])).argmax(1) == y[:n_pgd])),
        # ART's adversarial accuracy: among the correctly classified images, the share the attack does not flip.
        "art_adv_acc": float(adversarial_accuracy(clf, x, y, attack_crafter=fgsm)),
        # ART's empirical robustness: mean smallest FGSM budget that flips an image (over the images flipped).
        "art_emp_rob": float(empirical_robustness(clf, x[:n_pgd], "fgsm",
                                                  {"eps": 0.25, "eps_step": 2 / 255, "batch_size": 256})),
        "curve": curve,
    }


# 1. The existing ART pipeline: a PyTorchClassifier trained with ART's own fit.
half = len(data.x_train) // 2
x_pre, y_pre, x_ft, y_ft = data.x_train[:half], data.y_train[:half], data.x_train[half:], data.y_train[half:]
clf = make_classifier()
clf.fit(x_pre, y_pre, batch_size=64, nb_epochs=PRETRAIN_EPOCHS)
pretrained = copy.deepcopy(clf.model.state_dict())
results = {"pre-trained (ART fit)": evaluate(clf)}

# 2a. Undefended control: keep fine-tuning with ART's fit, as many optimizer steps as HLDR takes.
plain = make_classifier(pretrained, lr=FINETUNE_LR)
plain.fit(x_ft, y_ft, batch_size=64, nb_epochs=len(BUDGETS) * FINETUNE_EPOCHS)
results["fine-tuned, ART fit"] = evaluate(plain)

# 2b. The drop-in: HLDRTrainer takes the PyTorchClassifier and an ART attack on it. It wraps the classifier in a
#     LatentClassifier that shares its model and optimizer, so `defended` itself is fine-tuned.
defended = make_classifier(pretrained, lr=FINETUNE_LR)
trainer = HLDRTrainer(defended, FastGradientMethod(defended, eps=16 / 255), xi=0.25, budgets=BUDGETS, seed=args.seed)
history = trainer.fit(x_ft, y_ft, batch_size=64, nb_epochs=FINETUNE_EPOCHS, verbose=False)
print("HLDR regularized the layers", trainer.get_classifier().latent_layers)
print("last epoch:", {k: round(v, 4) for k, v in history[-1].items()})
results["fine-tuned, HLDR"] = evaluate(defended)  # the same ART evaluation, on the same ART object

rows = [[name, r["clean"], r["fgsm"], r["pgd"], r["art_adv_acc"], f"{r['art_emp_rob'] * 255:.1f}/255"]
        for name, r in results.items()]
table = markdown_table(
    ["model", "clean acc.", "FGSM 8/255", "PGD-10 8/255", "ART adversarial_accuracy (FGSM 8/255)",
     "ART empirical_robustness (FGSM)"], rows)
settings = (
    f"HLDR in an ART pipeline: {data.description}; VGG-16 width {WIDTH}; seed {args.seed}.\n"
    f"Pre-training: ART PyTorchClassifier.fit, {PRETRAIN_EPOCHS} epochs on {len(x_pre)} images (Nadam 1e-3, batch "
    f"64). Fine-tuning on the other {len(x_ft)} images (Nadam {FINETUNE_LR:g}): ART fit for "
    f"{len(BUDGETS) * FINETUNE_EPOCHS} epochs, or HLDRTrainer for {FINETUNE_EPOCHS} epochs (3 FGSM pairs per image "
    f"at 0, 16/255, 32/255; xi 0.25).\n"
    f"Evaluation on the {len(data.x_test)} test images with ART's attacks (L-inf, true labels), PGD (10 steps of "
    f"eps/4) and ART's empirical_robustness on the first {n_pgd}; robust accuracy = correct after the attack / all "
    f"images."
)
out.write(settings, table)

plot_accuracy_curves(CURVE_EPS_255, {name: r["curve"] for name, r in results.items()}, "FGSM budget eps (x 1/255)",
                     f"VGG-16 (width {WIDTH}) on Fashion-MNIST: ART's FGSM", out.path("_fgsm.png"))
