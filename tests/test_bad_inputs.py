"""
Bad input across every public trainer and analysis function: each is rejected before any work, with the right
error type and a message that names the argument (in backticks, as `name`), and the model is left untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from art.estimators.classification import SklearnClassifier
from helpers import make_classifier
from sklearn.linear_model import LogisticRegression
from test_reliability import FACTORIES

from art_latent import LatentClassifier
from art_latent.analysis import (
    LayerSustainabilityAnalysis,
    RobustnessReport,
    accuracy_vs_noise,
    eps_ref,
    mean_confidence_interval,
    perturbation_error,
    representation_dimensionality,
    representation_sensitivity,
    rg_score,
    rho2,
    robust_accuracy_auc,
)
from art_latent.defences import DenoiserTrainer, FeatureGuidedDenoiser
from art_latent.trainers import (
    AFDTrainer,
    ATLRTrainer,
    DeepDefenseTrainer,
    FIMRTrainer,
    GaussianNoiseTrainer,
    HLDRTrainer,
    LatentTrainer,
    LayerwisePerturbationTrainer,
    StabilityTrainer,
)


def _fgsm(clf: LatentClassifier) -> FastGradientMethod:
    return FastGradientMethod(clf, eps=0.1)


def _data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32), np.arange(n) % 3


def _fit(**kwargs: Any) -> Callable[[LatentClassifier], Any]:
    """Call LatentTrainer.fit with good data and arguments, except for `kwargs`."""

    def call(clf: LatentClassifier) -> Any:
        x, y = _data()
        args: dict[str, Any] = {"x": x, "y": y, "nb_epochs": 1, "batch_size": 4, "verbose": False}
        args.update(kwargs)
        return LatentTrainer(clf).fit(**args)

    return call


def _with_x(mutate: Callable[[np.ndarray], np.ndarray], **kwargs: Any) -> Callable[[LatentClassifier], Any]:
    return lambda clf: _fit(x=mutate(_data()[0]), **kwargs)(clf)


def _with_y(y: Any) -> Callable[[LatentClassifier], Any]:
    return lambda clf: _fit(y=y)(clf)


def _denoiser(**kwargs: Any) -> FeatureGuidedDenoiser:
    args: dict[str, Any] = {"in_channels": 1, "width": 4, "depth": 1, "clip_values": (0.0, 1.0), "device_type": "cpu"}
    return FeatureGuidedDenoiser(**{**args, **kwargs})


def _sklearn_classifier() -> SklearnClassifier:
    x, y = _data()
    return SklearnClassifier(LogisticRegression().fit(x.reshape(len(x), -1), y))


# (id, call(classifier), expected error type, argument named in the message)
CASES: list[tuple[str, Callable[[LatentClassifier], Any], type[Exception], str]] = [
    # ---- LatentTrainer and fit
    ("trainer-sklearn", lambda clf: LatentTrainer(_sklearn_classifier()), TypeError, "classifier"),
    ("trainer-seed", lambda clf: LatentTrainer(clf, seed=-1), ValueError, "seed"),
    ("trainer-log-every", lambda clf: LatentTrainer(clf, log_every=0), ValueError, "log_every"),
    ("trainer-amp", lambda clf: LatentTrainer(clf, amp="fp8"), ValueError, "amp"),
    ("trainer-distributed", lambda clf: LatentTrainer(clf, distributed="yes"), ValueError, "distributed"),
    ("trainer-check-finite", lambda clf: LatentTrainer(clf, check_finite="yes"), ValueError, "check_finite"),
    ("fit-batch-size-0", _fit(batch_size=0), ValueError, "batch_size"),
    ("fit-batch-size-neg", _fit(batch_size=-8), ValueError, "batch_size"),
    ("fit-nb-epochs", _fit(nb_epochs=0), ValueError, "nb_epochs"),
    ("fit-empty", _with_x(lambda x: x[:0]), ValueError, "x"),
    ("fit-nan", _with_x(lambda x: np.where(x > 0.9, np.nan, x).astype(np.float32)), ValueError, "x"),
    ("fit-inf", _with_x(lambda x: np.where(x > 0.9, np.inf, x).astype(np.float32)), ValueError, "x"),
    ("fit-shape", _with_x(lambda x: x[:, :, :4]), ValueError, "x"),
    ("fit-int-dtype", _with_x(lambda x: (x * 255).astype(np.uint8)), ValueError, "x"),
    ("fit-range", _with_x(lambda x: x * 255), ValueError, "x"),
    ("fit-labels-high", _with_y(np.arange(12) % 3 + 1), ValueError, "y"),
    ("fit-labels-negative", _with_y(np.arange(12) % 3 - 1), ValueError, "y"),
    ("fit-labels-fractional", _with_y(np.full(12, 0.5)), ValueError, "y"),
    ("fit-labels-one-hot-width", _with_y(np.eye(4)[np.arange(12) % 4]), ValueError, "y"),
    ("fit-labels-count", _with_y(np.arange(11) % 3), ValueError, "y"),
    ("fit-labels-3d", _with_y(np.zeros((12, 3, 1))), ValueError, "y"),
    ("fit-validation-tuple", _fit(validation_data=(_data()[0],)), ValueError, "validation_data"),
    ("fit-validation-nan", _fit(validation_data=(np.full((4, 1, 8, 8), np.nan, np.float32), np.zeros(4, int))),
     ValueError, "validation_data[0]"),
    ("fit-checkpoint-every", _fit(checkpoint_every=0, checkpoint_dir="unused"), ValueError, "checkpoint_every"),
    ("fit-resume-without-dir", _fit(resume=True), ValueError, "checkpoint_dir"),
    ("fit-scheduler", _fit(scheduler=object()), TypeError, "scheduler"),
    ("fit-callback", _fit(callbacks=[42]), TypeError, "callbacks"),
    ("fit-unknown-kwarg", _fit(nb_epoch=3), TypeError, "nb_epoch"),
    # ---- HLDR
    ("hldr-xi-high", lambda clf: HLDRTrainer(clf, _fgsm(clf), xi=1.5), ValueError, "xi"),
    ("hldr-xi-nan", lambda clf: HLDRTrainer(clf, _fgsm(clf), xi=float("nan")), ValueError, "xi"),
    ("hldr-budget-negative", lambda clf: HLDRTrainer(clf, _fgsm(clf), budgets=(0.0, -0.1)), ValueError, "budgets"),
    ("hldr-budgets-empty", lambda clf: HLDRTrainer(clf, _fgsm(clf), budgets=()), ValueError, "budgets"),
    ("hldr-layer-name", lambda clf: HLDRTrainer(clf, _fgsm(clf), layers=["res.rleu"]), ValueError, "layers"),
    ("hldr-regenerate", lambda clf: HLDRTrainer(clf, _fgsm(clf), regenerate="always"), ValueError, "regenerate"),
    ("hldr-normalization", lambda clf: HLDRTrainer(clf, _fgsm(clf), normalization="l2"), ValueError,
     "normalization"),
    ("hldr-p", lambda clf: HLDRTrainer(clf, _fgsm(clf), p=3), ValueError, "p"),
    ("hldr-noise-sigma", lambda clf: HLDRTrainer(clf, _fgsm(clf), noise_sigma=-0.1), ValueError, "noise_sigma"),
    ("hldr-generation-batch", lambda clf: HLDRTrainer(clf, _fgsm(clf), generation_batch_size=0), ValueError,
     "generation_batch_size"),
    ("hldr-attack", lambda clf: HLDRTrainer(clf, "fgsm"), TypeError, "attack"),
    # ---- baselines
    ("fimr-zeta", lambda clf: FIMRTrainer(clf, zeta=-1.0), ValueError, "zeta"),
    ("fimr-reduction", lambda clf: FIMRTrainer(clf, reduction="max"), ValueError, "reduction"),
    ("fimr-max-inverse", lambda clf: FIMRTrainer(clf, max_inverse=0.0), ValueError, "max_inverse"),
    ("agnt-sigma", lambda clf: GaussianNoiseTrainer(clf, sigma=-0.1), ValueError, "sigma"),
    ("agnt-sigma-inf", lambda clf: GaussianNoiseTrainer(clf, sigma=float("inf")), ValueError, "sigma"),
    ("stability-alpha", lambda clf: StabilityTrainer(clf, alpha=-1.0), ValueError, "alpha"),
    ("stability-sigma", lambda clf: StabilityTrainer(clf, sigma=0.0), ValueError, "sigma"),
    ("denoiser-type", lambda clf: DenoiserTrainer(clf, "unet", _fgsm(clf)), TypeError, "denoiser"),
    ("denoiser-guide", lambda clf: DenoiserTrainer(clf, _denoiser(), _fgsm(clf), guide_layer="res.nope"), ValueError,
     "guide_layer"),
    ("denoiser-lr", lambda clf: DenoiserTrainer(clf, _denoiser(), _fgsm(clf), learning_rate=0.0), ValueError,
     "learning_rate"),
    ("denoiser-width", lambda clf: _denoiser(width=0), ValueError, "width"),
    ("denoiser-depth", lambda clf: _denoiser(depth=-1), ValueError, "depth"),
    # ---- AFD
    ("afd-loss", lambda clf: AFDTrainer(clf, _fgsm(clf), loss="mse"), ValueError, "loss"),
    ("afd-lr-encoder", lambda clf: AFDTrainer(clf, _fgsm(clf), lr_encoder=-1.0), ValueError, "lr_encoder"),
    ("afd-lr-discriminator", lambda clf: AFDTrainer(clf, _fgsm(clf), lr_discriminator=0.0), ValueError,
     "lr_discriminator"),
    ("afd-embedding", lambda clf: AFDTrainer(clf, _fgsm(clf), embedding_layer="fc2"), ValueError, "embedding_layer"),
    ("afd-width", lambda clf: AFDTrainer(clf, _fgsm(clf), discriminator_width=0), ValueError, "discriminator_width"),
    # ---- Deep Defense
    ("deepdefense-lam", lambda clf: DeepDefenseTrainer(clf, lam=-1.0), ValueError, "lam"),
    ("deepdefense-c", lambda clf: DeepDefenseTrainer(clf, c=-1.0), ValueError, "c"),
    ("deepdefense-d", lambda clf: DeepDefenseTrainer(clf, d=-1.0), ValueError, "d"),
    ("deepdefense-max-iter", lambda clf: DeepDefenseTrainer(clf, max_iter=0), ValueError, "max_iter"),
    ("deepdefense-overshoot", lambda clf: DeepDefenseTrainer(clf, overshoot=-0.5), ValueError, "overshoot"),
    ("deepdefense-candidates", lambda clf: DeepDefenseTrainer(clf, candidates=3), ValueError, "candidates"),
    # ---- layerwise and AT-LR
    ("layerwise-eps", lambda clf: LayerwisePerturbationTrainer(clf, eps=-1.0), ValueError, "eps"),
    ("layerwise-variant", lambda clf: LayerwisePerturbationTrainer(clf, variant="fgsm"), ValueError, "variant"),
    ("layerwise-alpha", lambda clf: LayerwisePerturbationTrainer(clf, alpha=1.5), ValueError, "alpha"),
    ("layerwise-layers", lambda clf: LayerwisePerturbationTrainer(clf, layers=["stem.unit.cnv"]), ValueError,
     "layers"),
    ("atlr-gamma", lambda clf: ATLRTrainer(clf, _fgsm(clf), layers=["fc"], gamma=-1.0), ValueError, "gamma"),
    ("atlr-eta", lambda clf: ATLRTrainer(clf, _fgsm(clf), eta=float("nan")), ValueError, "eta"),
    ("atlr-base", lambda clf: ATLRTrainer(clf, _fgsm(clf), base="mart"), ValueError, "base"),
    ("atlr-beta", lambda clf: ATLRTrainer(clf, _fgsm(clf), beta=-1.0), ValueError, "beta"),
    ("atlr-lsa-samples", lambda clf: ATLRTrainer(clf, _fgsm(clf), lsa_samples=0), ValueError, "lsa_samples"),
    ("atlr-layers", lambda clf: ATLRTrainer(clf, _fgsm(clf), layers=["head2"]), ValueError, "layers"),
    # ---- estimator
    ("classifier-model", lambda clf: LatentClassifier("vgg", torch.nn.CrossEntropyLoss(), (1, 8, 8), 3), TypeError,
     "model"),
    ("classifier-layers", lambda clf: make_classifier(layers=["stem.unit.actt"]), ValueError, "layers"),
    ("activations-layer", lambda clf: clf.get_activations(_data()[0], "res.reul"), ValueError, "layer"),
    ("activations-batch", lambda clf: clf.get_activations(_data()[0], "fc", batch_size=0), ValueError,
     "batch_size"),
    # ---- analysis
    ("report-attacks", lambda clf: RobustnessReport(attacks=("fgsm", "cw")), ValueError, "attacks"),
    ("report-eps", lambda clf: RobustnessReport(eps_list=(0.0, -0.1)), ValueError, "eps_list"),
    ("report-pgd-iter", lambda clf: RobustnessReport(pgd_max_iter=0), ValueError, "pgd_max_iter"),
    ("report-batch", lambda clf: RobustnessReport(batch_size=0), ValueError, "batch_size"),
    ("report-restarts", lambda clf: RobustnessReport(pgd_restarts=-1), ValueError, "pgd_restarts"),
    ("lsa-layers", lambda clf: LayerSustainabilityAnalysis(clf, layers=["nope"]), ValueError, "layers"),
    ("lsa-x-nan", lambda clf: LayerSustainabilityAnalysis(clf).run(np.full((4, 1, 8, 8), np.nan, np.float32),
                                                                     noise="gaussian"), ValueError, "x"),
    ("ci-confidence", lambda clf: mean_confidence_interval([0.5, 0.6], confidence=1.5), ValueError, "confidence"),
    ("ci-values", lambda clf: mean_confidence_interval([]), ValueError, "values"),
    ("noise-sigmas", lambda clf: accuracy_vs_noise(clf, *_data(), sigmas=[-0.1]), ValueError, "sigmas"),
    ("perturbation-error-shape", lambda clf: perturbation_error(clf, _data()[0], _data(6)[0]), ValueError, "x_adv"),
    ("dimensionality-variance", lambda clf: representation_dimensionality(clf, _data()[0], variance=1.5),
     ValueError, "variance"),
    ("sensitivity-shape", lambda clf: representation_sensitivity(clf, _data()[0], _data(6)[0]), ValueError, "x_adv"),
    ("eps-ref-target", lambda clf: eps_ref(clf, *_data(), target_error=1.5), ValueError, "target_error"),
    ("rho2-max-iter", lambda clf: rho2(clf, _data()[0], max_iter=0), ValueError, "max_iter"),
    ("rg-score-empty", lambda clf: rg_score([]), ValueError, "accuracies"),
    ("auc-empty", lambda clf: robust_accuracy_auc([]), ValueError, "curve"),
]


def _state(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[bool], list[bool]]:
    return ([t.detach().clone() for t in model.state_dict().values()], [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("call", "error", "argument"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_naming_the_argument(call, error, argument):
    clf = make_classifier()
    clf.model.train()
    before = _state(clf.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            call(clf)
    assert f"`{argument}`" in str(info.value), str(info.value)
    after = _state(clf.model)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True)), "the model was changed"
    assert before[1:] == after[1:], "modes or requires_grad flags were changed"


def test_unknown_layer_names_list_close_matches():
    with pytest.raises(ValueError, match=r"`layers`.*'res.rleu'.*Did you mean 'res.relu'"):
        make_classifier(layers=["res.rleu"])
    clf = make_classifier()
    with pytest.raises(ValueError, match=r"`layer`.*'res.reul'.*Did you mean 'res.relu'"):
        clf.get_activations(_data()[0], "res.reul")


def test_an_attack_on_another_model_warns_of_a_transfer_attack():
    clf, other = make_classifier(), make_classifier()
    with pytest.warns(UserWarning, match="transfer"):
        HLDRTrainer(clf, FastGradientMethod(other, eps=0.1))
    with pytest.warns(UserWarning, match="transfer"):
        LatentTrainer(clf, validation_attack=FastGradientMethod(other, eps=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1))  # same classifier: no warning


def test_a_leaf_name_alone_suggests_the_qualified_names():
    with pytest.raises(ValueError, match=r"Did you mean .*'stem.unit.bn'"):
        make_classifier(layers=["bn"])


# ---------------------------------------------------------------------------------------------------- every trainer
# The checks at the start of `fit`, for every trainer: before any precomputation, naming the argument, the model
# (weights, BatchNorm statistics, modes) unchanged.

class _TupleNet(helpers.TinyNet):
    """Returns (logits, inputs): a model whose output is not the logits tensor."""

    def forward(self, x):
        return super().forward(x), x


class _UnusedLayerNet(helpers.TinyNet):
    """A TinyNet with a module its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Linear(3, 3)


def _classifier_with(nb_classes: int = 3, model: torch.nn.Module | None = None, **kwargs: Any) -> LatentClassifier:
    torch.manual_seed(0)
    model = helpers.TinyNet() if model is None else model
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), nb_classes,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.05), clip_values=(0.0, 1.0),
                            device_type="cpu", **kwargs)


def _frozen_classifier() -> LatentClassifier:
    clf = _classifier_with()
    for parameter in clf.model.parameters():
        parameter.requires_grad_(False)
    return clf


def _trainer_fit(name: str, classifier: Callable[[], LatentClassifier] | None = None,
                 **kwargs: Any) -> Callable[[LatentClassifier], Any]:
    def call(clf: LatentClassifier) -> Any:
        if classifier is not None:
            clf = classifier()
        trainer = FACTORIES[name](clf, 0)
        x, y = _data()
        args: dict[str, Any] = {"x": x, "y": y, "nb_epochs": 1, "batch_size": 4, "verbose": False}
        args.update({k: v(trainer) if callable(v) and k == "scheduler" else v for k, v in kwargs.items()})
        return trainer.fit(**args)

    return call


def _other_scheduler(trainer: Any) -> Any:
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return torch.optim.lr_scheduler.StepLR(other, step_size=1)


_SOFT = np.tile([[0.5, 0.5, 0.0]], (12, 1))
_ZERO_ROW = np.eye(3)[np.arange(12) % 3]
_ZERO_ROW[5] = 0
TRAINER_CASES: list[tuple[str, Callable[[LatentClassifier], Any], type[Exception], str]] = []
for _name in sorted(FACTORIES):
    TRAINER_CASES += [
        (f"{_name}-labels-strings", _trainer_fit(_name, y=np.array(["a", "b", "c"] * 4)), ValueError, "y"),
        (f"{_name}-labels-soft", _trainer_fit(_name, y=_SOFT), ValueError, "y"),
        (f"{_name}-labels-zero-row", _trainer_fit(_name, y=_ZERO_ROW), ValueError, "y"),
        (f"{_name}-callbacks-function", _trainer_fit(_name, callbacks=lambda t, e, logs: None), TypeError,
         "callbacks"),
        (f"{_name}-scheduler-other-optimizer", _trainer_fit(_name, scheduler=_other_scheduler), ValueError,
         "scheduler"),
        (f"{_name}-checkpoint-dir-empty", _trainer_fit(_name, checkpoint_dir=""), ValueError, "checkpoint_dir"),
        (f"{_name}-checkpoint-dir-unwritable", _trainer_fit(_name, checkpoint_dir="/dev/null/ckpt"), ValueError,
         "checkpoint_dir"),
        (f"{_name}-nb-classes-larger", _trainer_fit(_name, classifier=lambda: _classifier_with(5)), ValueError,
         "nb_classes"),
        (f"{_name}-tuple-output", _trainer_fit(_name, classifier=lambda: _classifier_with(model=_TupleNet())),
         TypeError, "output_key"),
        *([] if _name == "denoiser" else [  # the denoiser trains its own network: a frozen classifier is normal
            (f"{_name}-no-trainable-parameter", _trainer_fit(_name, classifier=_frozen_classifier), ValueError,
             "classifier")]),
        (f"{_name}-drop-last", _trainer_fit(_name, drop_last="yes"), ValueError, "drop_last"),
        (f"{_name}-validation-not-a-pair", _trainer_fit(_name, validation_data=5), ValueError, "validation_data"),
    ]
del _name


def _targeted(clf: LatentClassifier) -> FastGradientMethod:
    return FastGradientMethod(clf, eps=0.1, targeted=True)


TRAINER_CASES += [
    ("seed-too-large", lambda clf: LatentTrainer(clf, seed=2**32), ValueError, "seed"),
    ("hldr-targeted", lambda clf: HLDRTrainer(clf, _targeted(clf)), ValueError, "attack"),
    ("afd-targeted", lambda clf: AFDTrainer(clf, _targeted(clf)), ValueError, "attack"),
    ("atlr-targeted", lambda clf: ATLRTrainer(clf, _targeted(clf), layers=["fc"]), ValueError, "attack"),
    ("denoiser-targeted", lambda clf: DenoiserTrainer(clf, _denoiser(), _targeted(clf)), ValueError, "attack"),
    ("hldr-layers-empty", lambda clf: HLDRTrainer(clf, _fgsm(clf), layers=[]), ValueError, "layers"),
    ("hldr-layer-never-runs", lambda clf: HLDRTrainer(
        _classifier_with(model=_UnusedLayerNet()), _fgsm(clf), layers=["unused"]).fit(*_data(), verbose=False),
     ValueError, "layers"),
    ("hldr-call-never-runs", lambda clf: HLDRTrainer(clf, _fgsm(clf), layers=["fc#1"]).fit(*_data(), verbose=False),
     ValueError, "layers"),
    ("fit-batchnorm-last-batch-of-one", _fit(x=_data(13)[0], y=_data(13)[1]), ValueError, "drop_last"),
    ("afd-embedding-never-runs", lambda clf: AFDTrainer(_classifier_with(model=_UnusedLayerNet()), _fgsm(clf),
                                                        embedding_layer="unused"), ValueError, "embedding_layer"),
    ("denoiser-guide-never-runs", lambda clf: DenoiserTrainer(
        _classifier_with(model=_UnusedLayerNet()), _denoiser(), _fgsm(clf), guide_layer="unused").fit(
        *_data(), verbose=False), ValueError, "guide_layer"),
    ("fit-checkpoint-null-byte", _fit(checkpoint_dir="a\0b"), ValueError, "checkpoint_dir"),
    ("fit-nb-classes-smaller", lambda clf: LatentTrainer(_classifier_with(2)).fit(
        _data()[0], _data()[1] % 2, verbose=False), ValueError, "nb_classes"),
]


def test_the_trainer_matrix_covers_every_trainer():
    assert {case[0].rsplit("-labels-strings", 1)[0] for case in TRAINER_CASES if "labels-strings" in case[0]} == set(
        FACTORIES)
    assert len(CASES) + len(TRAINER_CASES) >= 150


@pytest.mark.parametrize(("call", "error", "argument"), [case[1:] for case in TRAINER_CASES],
                         ids=[c[0] for c in TRAINER_CASES])
def test_bad_fit_input_is_rejected_before_any_work(call, error, argument):
    test_bad_input_is_rejected_naming_the_argument(call, error, argument)


def test_a_batchnorm_last_batch_of_one_trains_with_drop_last():
    clf = make_classifier()
    x, y = _data(13)
    history = LatentTrainer(clf).fit(x, y, nb_epochs=1, batch_size=4, drop_last=True, verbose=False)
    assert len(history) == 1


# ---------------------------------------------------------------------------------------------------- units
# Every budget is in input units (8/255 for inputs in [0, 1]); a budget larger than the whole input range is a unit
# mix-up, refused before any work with the suggestion /255.

UNIT_CASES: list[tuple[str, Callable[[LatentClassifier], Any], type[Exception], str]] = [
    ("units-hldr-budgets", lambda clf: HLDRTrainer(clf, _fgsm(clf), budgets=(0, 16, 32)), ValueError, "budgets"),
    ("units-hldr-noise", lambda clf: HLDRTrainer(clf, _fgsm(clf), noise_sigma=32), ValueError, "noise_sigma"),
    ("units-attack-eps", lambda clf: HLDRTrainer(clf, FastGradientMethod(clf, eps=16)), ValueError, "attack"),
    ("units-afd-attack", lambda clf: AFDTrainer(clf, FastGradientMethod(clf, eps=8)), ValueError, "attack"),
    ("units-validation-attack", lambda clf: LatentTrainer(clf, validation_attack=FastGradientMethod(clf, eps=8)),
     ValueError, "validation_attack"),
    ("units-agnt-sigma", lambda clf: GaussianNoiseTrainer(clf, sigma=16), ValueError, "sigma"),
    ("units-stability-sigma", lambda clf: StabilityTrainer(clf, sigma=16), ValueError, "sigma"),
    ("units-denoiser-budgets", lambda clf: DenoiserTrainer(clf, _denoiser(), _fgsm(clf), budgets=(0, 8)), ValueError,
     "budgets"),
    ("units-report-eps", lambda clf: RobustnessReport(eps_list=[0, 8, 16], attacks=("fgsm",), verbose=False)
     .evaluate({"undefended": clf}, *_data()), ValueError, "eps_list"),
    ("units-nb-classes-predict", lambda clf: _classifier_with(5).predict(_data()[0]), ValueError, "nb_classes"),
]


@pytest.mark.parametrize(("call", "error", "argument"), [case[1:] for case in UNIT_CASES],
                         ids=[c[0] for c in UNIT_CASES])
def test_budgets_in_the_wrong_units_are_refused(call, error, argument):
    test_bad_input_is_rejected_naming_the_argument(call, error, argument)


def test_the_unit_error_suggests_dividing_by_255():
    clf = make_classifier()
    with pytest.raises(ValueError, match=r"`budgets` has budget\(s\) 16, 32, larger than the whole input range 1.*"
                                         r"Did you mean 16/255, 32/255"):
        HLDRTrainer(clf, _fgsm(clf), budgets=(0, 16, 32))
    HLDRTrainer(clf, _fgsm(clf), budgets=(0, 1.0))  # the whole range is still a (large) budget


def test_a_one_output_binary_model_follows_the_art_convention():
    """ART accepts nb_classes=2 with one (sigmoid) output; the logit-count check must too (ART's own tests use it)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    clf = LatentClassifier(model, torch.nn.BCEWithLogitsLoss(), (1, 8, 8), 2, device_type="cpu",
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert clf.predict(_data()[0]).shape == (12, 1)
    with pytest.raises(ValueError, match="`nb_classes`"):
        _classifier_with(4).predict(_data()[0])  # 3 outputs for 4 classes is still an error
