"""
Adversarial feature desensitization (AFD, Bashivan et al., NeurIPS 2021) against plain fine-tuning.

AFD plays a GAN-like game on the network's embedding (the input of its final linear layer): a projection
discriminator learns to tell the embeddings of clean images from those of PGD images (conditioned on the label), and
the embedding learns to make them indistinguishable, while the classifier keeps training on clean images.
``AFDTrainer`` runs the three steps per batch; its history holds the discriminator's accuracies, the health signal
of the game.

One SmallCNN is pre-trained; two copies of its weights are fine-tuned with the same optimizer and batches, plainly
(``LatentTrainer``) and with ``AFDTrainer`` (softplus loss of the paper, training attack ART PGD-Linf eps 0.1).
Both are then compared on the paper's measures: the representation sensitivity ``|E(x) - E(x')| / |E(x)|`` under a
white-box PGD on each model, PGD robust accuracy over budgets and its area under the curve (AUC), and the number of
PCA dimensions holding 99% of the embedding's variance.

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), SmallCNN (two conv units and a
64-unit dense layer, BatchNorm, ELU); SGD with momentum 0.9, learning rate 0.01, batch 64.

Run: ``python examples/afd.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores); ``--smoke`` runs it on
a few dozen images in seconds.
"""

import copy

from _common import markdown_table, plot_accuracy_curves, small_cnn_classifier, start
from art.attacks.evasion import ProjectedGradientDescent

from art_latent import AFDTrainer, LatentClassifier, LatentTrainer
from art_latent.analysis import (
    accuracy_vs_eps,
    representation_dimensionality,
    representation_sensitivity,
    robust_accuracy_auc,
)

args, data, out = start(__doc__, __file__)
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = (1, 1) if args.smoke else (4, 3)
TRAIN_EPS = 0.1
BUDGETS = [0.0, 0.025, 0.05, 0.1, 0.15]
n_eval = min(500, len(data.x_test))
x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]


def make_classifier(state=None, sgd: bool = True) -> LatentClassifier:
    return small_cnn_classifier(data, state, sgd)


def pgd(clf: LatentClassifier, eps: float, steps: int = 10, random_start: bool = False) -> ProjectedGradientDescent:
    return ProjectedGradientDescent(clf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                                    num_random_init=int(random_start), batch_size=256, verbose=False)


clf = make_classifier(sgd=False)
LatentTrainer(clf, seed=args.seed).fit(data.x_train, data.y_train, nb_epochs=PRETRAIN_EPOCHS, batch_size=64,
                                       verbose=False)
pretrained = copy.deepcopy(clf.model.state_dict())

rows, curves, game = [], {}, []
for name in ("plain fine-tuning", "AFD"):
    clf = make_classifier(pretrained)
    if name == "AFD":
        attack = ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7, num_random_init=1,
                                          verbose=False)
        trainer = AFDTrainer(clf, attack, loss="softplus", lr_encoder=0.01, lr_discriminator=0.01,
                             validation_attack=None, seed=args.seed)
    else:
        trainer = LatentTrainer(clf, seed=args.seed)
    history = trainer.fit(data.x_train, data.y_train, nb_epochs=FINETUNE_EPOCHS, batch_size=64, verbose=False)
    if name == "AFD":
        game = [[h["epoch"], h["ce"], h["discriminator_loss"], h["encoder_loss"], h["disc_acc_clean"],
                 h["disc_acc_adv"]] for h in history]
    x_adv = pgd(clf, TRAIN_EPS).generate(x_eval, y=y_eval)  # white-box, on this model
    sensitivity = representation_sensitivity(clf, x_eval, x_adv)
    curves[name] = accuracy_vs_eps(clf, x_eval, y_eval, lambda c, e: pgd(c, e), BUDGETS)
    dims = representation_dimensionality(clf, x_eval)
    rows.append([name, curves[name][0], f"{sensitivity['median']:.3f} / {sensitivity['mean']:.3f}",
                 curves[name][BUDGETS.index(0.05)], curves[name][BUDGETS.index(0.1)],
                 robust_accuracy_auc(curves[name], BUDGETS), f"{dims['pca_dims']} of {dims['total_units']}",
                 f"{sum(h['time_s'] for h in history):.0f} s"])

table = markdown_table(["fine-tuning", "clean acc.", "sensitivity at 0.1 (median / mean)", "PGD acc. 0.05",
                        "PGD acc. 0.1", "PGD AUC", "PCA-99% dims", "training time"], rows)
game_table = markdown_table(["epoch", "CE", "discriminator loss", "encoder loss", "disc. acc. clean",
                             "disc. acc. adversarial"], game)
settings = (
    f"AFD vs plain fine-tuning: {data.description}; SmallCNN; seed {args.seed}.\n"
    f"Pre-training {PRETRAIN_EPOCHS} epochs (Nadam 1e-3, batch 64); fine-tuning {FINETUNE_EPOCHS} epochs (SGD momentum "
    f"0.9, lr 0.01, batch 64); AFD: softplus loss, encoder and discriminator lr 0.01, training attack ART PGD-Linf eps "
    f"{TRAIN_EPS} (7 steps of eps/4, random start).\n"
    f"Evaluation on the first {n_eval} test images, white-box PGD-Linf on each model (10 steps of eps/4, no random "
    f"start); sensitivity of the embedding (input of the last linear layer) at eps {TRAIN_EPS}; AUC over eps "
    f"{', '.join(f'{e:g}' for e in BUDGETS)}."
)
out.write(settings, table + "\n\nThe AFD game per epoch (discriminator accuracies measured before its update):\n\n"
          + game_table)

plot_accuracy_curves(BUDGETS, curves, "PGD-Linf budget eps", "SmallCNN on Fashion-MNIST: white-box PGD-10",
                     out.path("_pgd.png"))
