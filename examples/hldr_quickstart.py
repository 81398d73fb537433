"""
Defend a small VGG with HLDR inside an ordinary ART pipeline, on the Fashion-MNIST subset bundled with art_latent.

Run: ``python examples/hldr_quickstart.py`` (about a minute on 2 CPU cores).
"""

import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

from art_latent import HLDRTrainer, LatentClassifier, LatentTrainer
from art_latent.analysis import robust_accuracy
from art_latent.data import load_dataset
from art_latent.models import VGG

data = load_dataset("bundled")
torch.manual_seed(0)
model = VGG(in_channels=1, num_classes=10, width=0.25, input_size=28)
clf = LatentClassifier(
    model,
    torch.nn.CrossEntropyLoss(),
    input_shape=data.input_shape,
    nb_classes=data.nb_classes,
    optimizer=torch.optim.NAdam(model.parameters(), lr=1e-3),
    clip_values=(0.0, 1.0),
    layers="auto",  # the post-activation output of every hidden conv/dense block
)
print("regularized layers:", clf.latent_layers)

# Pre-train on half of the training split, fine-tune with HLDR on the other half (the paper's protocol).
half = len(data.x_train) // 2
LatentTrainer(clf, seed=0).fit(data.x_train[:half], data.y_train[:half], nb_epochs=6, batch_size=64)
trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), xi=0.25, budgets=(0.0, 16 / 255, 32 / 255), seed=0)
history = trainer.fit(
    data.x_train[half:], data.y_train[half:], validation_data=(data.x_test, data.y_test), nb_epochs=3, batch_size=64
)
print("last epoch:", history[-1])

# Evaluate with ART's own attacks.
for name, attack in {
    "FGSM 8/255": FastGradientMethod(clf, eps=8 / 255),
    "PGD-10 8/255": ProjectedGradientDescent(clf, eps=8 / 255, eps_step=2 / 255, max_iter=10, verbose=False),
}.items():
    print(f"{name}: robust accuracy {robust_accuracy(clf, data.x_test, data.y_test, attack):.3f}")
