"""
HLDR and AFD under the full evaluation suite: PGD vs AutoAttack vs the latent adaptive attack, with the masking
checklist.

One SmallCNN is pre-trained; three copies of its weights are fine-tuned with the same optimizer and batches: plainly
(``LatentTrainer``), with ``HLDRTrainer`` (FGSM pairs at 0, 0.05 and 0.1 made on the pre-trained model, xi = 0.25)
and with ``AFDTrainer`` (softplus loss, training attack ART PGD-Linf eps 0.1). ``RobustnessReport`` with its default
suite then attacks all three: FGSM, PGD-10 with a random start, transfer from the undefended model, Gaussian noise,
AutoAttack (standard: APGD-CE, APGD-T, Square) and ``LatentPGD`` on the layers each defense regularized (HLDR's
latent layers; AFD's embedding, the input of the final linear layer, falls back to the classifier's latent layers),
and the gradient-masking checklist. It writes JSON, Markdown and PNG plots to ``<out>/evaluate_latent_defenses/``.

Data and model: the bundled Fashion-MNIST subset (3000 training / 1000 test images), SmallCNN (two conv units and a
64-unit dense layer, BatchNorm, ELU); SGD with momentum 0.9, learning rate 0.01, batch 64.

Run: ``python examples/evaluate_latent_defenses.py [--out DIR] [--seed N]`` (54 minutes on 2 CPU cores shared with
other jobs, most of it AutoAttack's Square); ``--smoke`` runs it on a few dozen images with a small attack budget in
seconds.
"""

import copy

from _common import markdown_table, small_cnn_classifier, start
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

from art_latent import AFDTrainer, HLDRTrainer, LatentClassifier, LatentTrainer, RobustnessReport

args, data, out = start(__doc__, __file__)
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = (1, 1) if args.smoke else (4, 3)
EPS = [0.0, 0.05, 0.1]
n_eval = min(500, len(data.x_test))


def make_classifier(state=None, sgd: bool = True) -> LatentClassifier:
    return small_cnn_classifier(data, state, sgd)


clf = make_classifier(sgd=False)
LatentTrainer(clf, seed=args.seed).fit(data.x_train, data.y_train, nb_epochs=PRETRAIN_EPOCHS, batch_size=64,
                                       verbose=False)
pretrained = copy.deepcopy(clf.model.state_dict())

classifiers = {}
for name in ("undefended", "HLDR", "AFD"):
    clf = make_classifier(pretrained)
    if name == "HLDR":
        trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), xi=0.25, budgets=(0.0, 0.05, 0.1),
                              seed=args.seed)
    elif name == "AFD":
        attack = ProjectedGradientDescent(clf, eps=0.1, eps_step=0.025, max_iter=7, num_random_init=1, verbose=False)
        trainer = AFDTrainer(clf, attack, loss="softplus", lr_encoder=0.01, lr_discriminator=0.01,
                             validation_attack=None, seed=args.seed)
    else:
        trainer = LatentTrainer(clf, seed=args.seed)
    history = trainer.fit(data.x_train, data.y_train, nb_epochs=FINETUNE_EPOCHS, batch_size=64, verbose=False)
    print(f"{name}: {FINETUNE_EPOCHS} epochs, {sum(h['time_s'] for h in history):.0f} s, regularized layers "
          f"{clf.regularized_layers or clf.latent_layers}")
    classifiers[name] = clf

small = {"autoattack_kwargs": {"max_iter": 10, "square_queries": 50}, "square_queries": 50,
         "check_samples": 24} if args.smoke else {}
report = RobustnessReport(eps_list=EPS, sigma_list=[0.0, 0.1], pgd_max_iter=10, pgd_restarts=1,
                          perturbation_eps=0.05, check_eps=0.1, seed=args.seed, verbose=False, **small)
results = report.evaluate(classifiers, data.x_test[:n_eval], data.y_test[:n_eval], reference="undefended")
report.write(results, out.dir / out.name)

rows = []
for name, r in results["models"].items():
    acc = r["accuracy"]
    checks = r.get("masking_checks", {})
    rows.append([name, r["clean_accuracy"]] + [acc[a][k] for k in (1, 2) for a in ("pgd", "autoattack", "latent")]
                + [", ".join(f"{c}: {'pass' if v['passed'] else 'FAIL'}" for c, v in checks.items())])
table = markdown_table(["model", "clean", "PGD 0.05", "AutoAttack 0.05", "latent 0.05", "PGD 0.1", "AutoAttack 0.1",
                        "latent 0.1", "masking checklist at 0.1"], rows)
settings = (
    f"HLDR and AFD under the full suite: {data.description}; SmallCNN; seed {args.seed}.\n"
    f"Pre-training {PRETRAIN_EPOCHS} epochs (Nadam 1e-3, batch 64); fine-tuning {FINETUNE_EPOCHS} epochs (SGD "
    f"momentum 0.9, lr 0.01, batch 64). Evaluation on the first {n_eval} test images: PGD-Linf 10 steps of eps/4 with "
    f"1 random start; AutoAttack {report.autoattack_preset} (APGD-CE, APGD-T, Square); LatentPGD with the same "
    f"steps, latent weight 0.5, push mode; masking checklist at eps 0.1 on {report.check_samples} samples."
)
out.write(settings, table + "\n\nFlags: " + "; ".join(f"{n}: {', '.join(r['flags']) or 'none'}"
                                                        for n, r in results["models"].items()))
