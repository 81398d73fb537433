"""
Layerwise perturbation training (Sankaranarayanan et al., AAAI 2018) against plain training.

The method perturbs hidden activations instead of inputs: the forward pass of each batch adds
``eps_c * sign(g_c)`` to the output of every conv block's BatchNorm, where ``g_c`` is the gradient that reached that
layer in the *previous* batch's backward pass (so the perturbation costs no extra backward pass) and ``eps_c`` is
``eps`` times that gradient's range. ``LayerwisePerturbationTrainer`` registers the hooks only inside ``fit``:
prediction and attacks see the plain network.

Three SmallCNNs are trained from the same initialisation with the same batches: plainly (``LatentTrainer``), with
the paper's Algorithm 1 (``variant="orig"``, cached previous-batch gradients) and with FGS-inter (``"fgs-inter"``:
gradients of the current batch, one extra forward and backward, joint clean + perturbed loss). All three are
evaluated on clean test images and under FGSM at small budgets. The history's ``rel_size`` reports how large the
perturbation is relative to the activations (RMS over their standard deviation).

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), SmallCNN (two conv units and a
dense layer, BatchNorm, ELU); SGD with Nesterov momentum 0.9 (the paper's optimizer), learning rate 0.02, batch 64.

Run: ``python examples/layerwise.py [--out DIR] [--seed N]`` (about a minute on 2 CPU cores); ``--smoke`` runs it
on a few dozen images in seconds.
"""

import torch
from _common import markdown_table, plot_accuracy_curves, start
from art.attacks.evasion import FastGradientMethod

from art_latent import LatentClassifier, LatentTrainer, LayerwisePerturbationTrainer
from art_latent.analysis import accuracy_vs_eps
from art_latent.models import SmallCNN

args, data, out = start(__doc__, __file__)
EPOCHS = 1 if args.smoke else 8
BUDGETS = [0.0, 0.01, 0.02, 0.05, 0.1]
RUNS = {"plain": None, "orig, eps 20": ("orig", 20.0), "orig, eps 100": ("orig", 100.0),
        "fgs-inter, eps 20": ("fgs-inter", 20.0)}
initial = SmallCNN(in_channels=1, num_classes=data.nb_classes).state_dict()  # one initialisation for every run

rows, curves = [], {}
for name, setting in RUNS.items():
    model = SmallCNN(in_channels=1, num_classes=data.nb_classes)
    model.load_state_dict(initial)
    clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True),
                           clip_values=(0.0, 1.0))
    if setting is None:
        trainer = LatentTrainer(clf, seed=args.seed)
    else:
        variant, eps = setting
        trainer = LayerwisePerturbationTrainer(clf, eps=eps, variant=variant, seed=args.seed)
        sites = trainer.sites  # the perturbed layers, chosen by layers="auto"
    history = trainer.fit(data.x_train, data.y_train, nb_epochs=EPOCHS, batch_size=64, verbose=False)
    curves[name] = accuracy_vs_eps(clf, data.x_test, data.y_test,
                                   lambda c, e: FastGradientMethod(c, eps=e, batch_size=256), BUDGETS)
    rel = {k.split("/", 1)[1]: v for k, v in history[-1].items() if k.startswith("rel_size/")}
    rows.append([name, *curves[name], history[-1]["accuracy"],
                 ", ".join(f"{site} {value:.3f}" for site, value in rel.items()) or "-",
                 f"{sum(h['time_s'] for h in history) / len(history):.2f}"])
    print(f"{name}: clean {curves[name][0]:.3f}, FGSM 0.05 {curves[name][BUDGETS.index(0.05)]:.3f}")

table = markdown_table(["training", "clean acc.", *(f"FGSM {e:g}" for e in BUDGETS[1:]), "train acc.",
                        "rel. perturbation size (last epoch)", "s / epoch"], rows)
settings = (
    f"Layerwise perturbation training vs plain training: {data.description}; SmallCNN; seed {args.seed}.\n"
    f"Every run: {EPOCHS} epochs from the same initialisation (SGD, Nesterov momentum 0.9, lr 0.02, batch 64); "
    f"perturbed sites {', '.join(sites)} (after the BatchNorm of each conv unit).\n"
    f"Evaluation on {len(data.x_test)} test images, ART's FGSM (L-inf, true labels)."
)
out.write(settings, table)

plot_accuracy_curves(BUDGETS, curves, "FGSM budget eps", f"SmallCNN, {EPOCHS} epochs, Fashion-MNIST subset",
                     out.path("_fgsm.png"))
