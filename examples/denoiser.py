"""
The feature-guided denoiser (HGD/FGD, Liao et al., CVPR 2018; a baseline of Schwartz & Ditzler 2021) in front of a
frozen classifier.

A small U-Net ``D`` estimates the adversarial noise, and the classifier sees ``x_hat = x - D(x)``. ``DenoiserTrainer``
trains ``D`` with the classifier frozen so that the denoised adversarial image produces the same activations as the
clean image at the *guide layer* (the last convolutional layer: FGD), on HLDR's pairs (FGSM at 0, 16/255 and 32/255
on the classifier). ``FeatureGuidedDenoiser`` is an ART ``PreprocessorPyTorch``: ``trainer.get_classifier()`` is the
same model with the denoiser as a preprocessing defence, and ART's white-box attacks differentiate through it.

Evaluated under ART's FGSM and PGD on the test images:

* ``undefended``: the classifier alone;
* ``denoiser, gray-box``: adversarial examples of the undefended classifier, classified through the denoiser (Liao
  et al.'s setting: the attacker does not know the denoiser);
* ``denoiser, white-box``: the attacks run on the defended classifier, through the denoiser.

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), VGG-16 of width 0.125 (BatchNorm,
ELU), pre-trained on the training images; the denoiser (width 8, two levels) is trained on the pairs of the second
half of them. A PNG shows a few images: clean, FGSM 16/255, denoised, and what the denoiser removed.

Run: ``python examples/denoiser.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores); ``--smoke`` runs it
on a few dozen images in seconds.
"""

import numpy as np
import torch
from _common import markdown_table, pyplot, save_figure, start
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

from art_latent import DenoiserTrainer, FeatureGuidedDenoiser, LatentClassifier, LatentTrainer
from art_latent.analysis import accuracy
from art_latent.models import VGG

args, data, out = start(__doc__, __file__)
PRETRAIN_EPOCHS, DENOISER_EPOCHS = (1, 1) if args.smoke else (4, 2)
BUDGETS = (0.0, 16 / 255, 32 / 255)
EPS_255 = [0, 4, 8, 16, 32]
n_eval = min(500, len(data.x_test))
x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]

model = VGG(in_channels=1, num_classes=data.nb_classes, width=0.125, input_size=28)
clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                       optimizer=torch.optim.NAdam(model.parameters(), lr=1e-3), clip_values=(0.0, 1.0))
LatentTrainer(clf, seed=args.seed).fit(data.x_train, data.y_train, nb_epochs=PRETRAIN_EPOCHS, batch_size=64,
                                       verbose=False)
weights_before = {k: v.clone() for k, v in model.state_dict().items()}

denoiser = FeatureGuidedDenoiser(in_channels=1, width=8, depth=2)
trainer = DenoiserTrainer(clf, denoiser, FastGradientMethod(clf, eps=16 / 255), budgets=BUDGETS, seed=args.seed)
half = len(data.x_train) // 2
history = trainer.fit(data.x_train[half:], data.y_train[half:], validation_data=(x_eval, y_eval),
                      nb_epochs=DENOISER_EPOCHS, batch_size=64, verbose=False)
defended = trainer.get_classifier()  # the same model with the denoiser as an ART preprocessing defence
assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights_before.items()), "the classifier is frozen"
print(f"guide layer {trainer.guide_layer}; last epoch: guide loss {history[-1]['loss']:.4f}, "
      f"val accuracy {history[-1]['val_accuracy']:.3f}, gray-box FGSM 16/255 {history[-1]['val_robust_accuracy']:.3f}")


def fgsm(c, eps):
    return FastGradientMethod(c, eps=eps, batch_size=256)


def pgd(c, eps):
    return ProjectedGradientDescent(c, eps=eps, eps_step=eps / 4, max_iter=10, batch_size=256, verbose=False)


rows = {"undefended": [], "denoiser, gray-box": [], "denoiser, white-box": []}
for make_attack, budgets in ((fgsm, EPS_255), (pgd, [8])):
    for eps_255 in budgets:
        if eps_255 == 0:
            x_plain = x_white = x_eval
        else:
            x_plain = make_attack(clf, eps_255 / 255).generate(x_eval, y=y_eval)  # on the undefended classifier
            x_white = make_attack(defended, eps_255 / 255).generate(x_eval, y=y_eval)  # through the denoiser
        rows["undefended"].append(accuracy(clf, x_plain, y_eval))
        rows["denoiser, gray-box"].append(accuracy(defended, x_plain, y_eval))
        rows["denoiser, white-box"].append(accuracy(defended, x_white, y_eval))

headers = ["model", "clean", *(f"FGSM {e}/255" for e in EPS_255[1:]), "PGD-10 8/255"]
table = markdown_table(headers, [[name, *values] for name, values in rows.items()])
settings = (
    f"Feature-guided denoiser: {data.description}; VGG-16 width 0.125; seed {args.seed}.\n"
    f"Classifier pre-trained {PRETRAIN_EPOCHS} epochs on all {len(data.x_train)} training images (Nadam 1e-3, batch "
    f"64), then frozen. "
    f"Denoiser: U-Net width 8, depth 2 ({sum(p.numel() for p in denoiser.parameters())} parameters), Adam 1e-3, "
    f"{DENOISER_EPOCHS} epochs on the pairs of the last {len(data.x_train) - half} training images (FGSM at 0, 16/255, "
    f"32/255), guide layer {trainer.guide_layer}, mean absolute error, batch 64.\n"
    f"Evaluation on the first {n_eval} test images, ART's FGSM and PGD (10 steps of eps/4), L-inf, true labels."
)
out.write(settings, table)

# A few images: clean, adversarial (FGSM 16/255 on the undefended classifier), denoised, and what D removed.
n_show = min(6, len(x_eval))
x_show, y_show = x_eval[:n_show], y_eval[:n_show]
x_adv = fgsm(clf, 16 / 255).generate(x_show, y=y_show)
with torch.no_grad():
    x_hat = denoiser.forward(torch.from_numpy(x_adv).to(denoiser.device))[0].cpu().numpy()
panels = [("clean", x_show, clf), ("FGSM 16/255", x_adv, clf), ("denoised", x_hat, clf),
          ("removed: x - x_hat", x_adv - x_hat, None)]
plt = pyplot()
fig, axes = plt.subplots(len(panels), n_show, figsize=(1.5 * n_show, 1.7 * len(panels)), squeeze=False)
for row, (title, images, scorer) in enumerate(panels):
    labels = scorer.predict(images).argmax(1) if scorer is not None else None
    for col in range(n_show):
        ax = axes[row, col]
        image = images[col, 0]
        ax.imshow(image, cmap="gray" if scorer is not None else "coolwarm",
                  vmin=0 if scorer is not None else -np.abs(image).max(), vmax=1 if scorer is not None
                  else np.abs(image).max())
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            ax.set_title(data.class_names[labels[col]], fontsize=7,
                         color="green" if labels[col] == y_show[col] else "red")
        if col == 0:
            ax.set_ylabel(title, fontsize=8)
save_figure(fig, out.path("_images.png"))
