"""
Deep Defense (Yan, Guo & Zhang, NeurIPS 2018) against plain fine-tuning.

Deep Defense adds to the cross-entropy a penalty on the L2 DeepFool perturbation of every training image, computed
inside the graph (a batched, differentiable DeepFool) so that its gradient reaches the weights: correctly classified
images are pushed away from the decision boundary. ``DeepDefenseTrainer`` implements it.

One SmallCNN is pre-trained; two copies of its weights are fine-tuned with the same optimizer and batches, plainly
(``LatentTrainer``) and with ``DeepDefenseTrainer`` (the paper's lam = 15, c = 25, d = 5, 5 DeepFool steps). Both are
compared on the paper's measures: rho_2, the mean ratio ``|r| / |x|`` of the DeepFool perturbation (50 steps), and
the FGSM accuracy at 0.2, 0.5 and 1.0 eps_ref, where eps_ref is the smallest FGSM budget at which the Deep Defense
model misclassifies half of the test images.

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), SmallCNN (two conv units and a
dense layer, BatchNorm, ELU); pre-training with Nadam, fine-tuning with SGD (momentum 0.9, learning rate 2e-3),
batch 64. A Deep Defense step costs about 20-50 plain steps.

Run: ``python examples/deep_defense.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores); ``--smoke``
runs it on a few dozen images in seconds.
"""

import copy

import torch
from _common import markdown_table, start

from art_latent import DeepDefenseTrainer, LatentClassifier, LatentTrainer
from art_latent.analysis import accuracy, accuracy_at_eps_ref, eps_ref, rho2
from art_latent.models import SmallCNN

args, data, out = start(__doc__, __file__)
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = (1, 1) if args.smoke else (4, 2)
n_rho = min(300, len(data.x_test))


def make_classifier(state=None) -> LatentClassifier:
    model = SmallCNN(in_channels=1, num_classes=data.nb_classes)
    if state is None:  # pre-training
        optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
    else:  # fine-tuning, at a lower rate
        model.load_state_dict(state)
        optimizer = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                            optimizer=optimizer, clip_values=(0.0, 1.0))


# Deep Defense fine-tunes a well-trained model (the penalty of a misclassified image is unbounded).
clf = make_classifier()
LatentTrainer(clf, seed=args.seed).fit(data.x_train, data.y_train, nb_epochs=PRETRAIN_EPOCHS, batch_size=64,
                                       verbose=False)
pretrained = copy.deepcopy(clf.model.state_dict())
pretrained_accuracy = accuracy(clf, data.x_test, data.y_test)

classifiers, rows = {}, []
for name in ("plain fine-tuning", "Deep Defense"):
    clf = make_classifier(pretrained)
    if name == "Deep Defense":
        trainer = DeepDefenseTrainer(clf, lam=15.0, c=25.0, d=5.0, max_iter=5, seed=args.seed)
    else:
        trainer = LatentTrainer(clf, seed=args.seed)
    history = trainer.fit(data.x_train, data.y_train, nb_epochs=FINETUNE_EPOCHS, batch_size=64, verbose=False)
    if name == "Deep Defense":
        print(f"last epoch: mean R_i {history[-1]['regularizer']:.3f}, mean |r|/|x| {history[-1]['ratio']:.4f}")
    classifiers[name] = clf
    rows.append([name, accuracy(clf, data.x_test, data.y_test), rho2(clf, data.x_test[:n_rho], max_iter=50),
                 f"{sum(h['time_s'] for h in history):.0f} s"])

# eps_ref from the Deep Defense model; every model's FGSM accuracy at its fractions (the paper's Table 1).
reference = eps_ref(classifiers["Deep Defense"], data.x_test, data.y_test)
for row, clf in zip(rows, classifiers.values(), strict=True):
    fractions = accuracy_at_eps_ref(clf, data.x_test, data.y_test, reference)
    row[3:3] = [fractions[0.2], fractions[0.5], fractions[1.0]]

table = markdown_table(["fine-tuning", "clean acc.", "rho_2", "FGSM acc. 0.2 eps_ref", "0.5 eps_ref", "1.0 eps_ref",
                        "training time"], rows)
settings = (
    f"Deep Defense vs plain fine-tuning: {data.description}; SmallCNN; seed {args.seed}.\n"
    f"Pre-training {PRETRAIN_EPOCHS} epochs (Nadam 1e-3, batch 64; test accuracy {pretrained_accuracy:.3f}); "
    f"fine-tuning {FINETUNE_EPOCHS} epochs (SGD momentum 0.9, lr 2e-3, batch 64); Deep Defense lam 15, c 25, d 5, "
    f"5 DeepFool steps.\n"
    f"rho_2 on the first {n_rho} test images (DeepFool, 50 steps, overshoot 0.02); accuracies on all "
    f"{len(data.x_test)}; eps_ref = {reference:.4f} (of the Deep Defense model; FGSM, L-inf)."
)
out.write(settings, table)
