"""
AutoAttack's "standard" and "fast" ensembles built from ART's attacks, as one ART evasion attack.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from tqdm.auto import tqdm

from art_latent.validation import check_choice, check_int, check_range

logger = logging.getLogger(__name__)

#: The ensembles: ``"standard"`` (Croce & Hein's standard version, without FAB-T: ART has no FAB) and ``"fast"``.
PRESETS = {
    "standard": ("apgd-ce", "apgd-t", "square"),
    "fast": ("apgd-ce", "apgd-dlr"),
}

MULTIPROCESS_MESSAGE = (
    "ART's APGD needs the `multiprocess` package, which is not installed: run `pip install multiprocess` "
    "(it is a dependency of art-latent)."
)


class AutoAttackEnsemble(EvasionAttack):
    """
    Run AutoAttack's attacks one after the other on the samples that are still classified correctly, and keep,
    per sample, the first adversarial example found (the worst case over the ensemble, as AutoAttack reports it).

    * ``"standard"``: APGD-CE (untargeted cross-entropy, `max_iter` steps), APGD-T (the targeted DLR loss against
      each of the `targets` highest-scoring wrong classes, `max_iter` steps each), Square (black-box,
      `square_queries` queries). Croce & Hein's standard version also runs FAB-T, which ART does not implement;
      in their tables FAB-T adds at most a few tenths of a percent after APGD-T.
    * ``"fast"``: APGD-CE and APGD-DLR (untargeted), for quick checks.

    Unlike ART's ``AutoAttack`` (whose ``targeted=True`` runs *every* attack of its list against every class and
    whose default list also runs DeepFool and a 5-restart Square), this is the published standard ensemble. It
    attacks with the true labels, needs logits from the model (the DLR loss), and ``multiprocess`` (imported by
    ART's APGD module).

    | Paper link: https://arxiv.org/abs/2003.01690 (Croce & Hein, ICML 2020)

    :param estimator: An ART classifier with loss gradients (a ``PyTorchClassifier``).
    :param eps: The budget, > 0.
    :param norm: ``np.inf`` or ``2``.
    :param preset: ``"standard"`` or ``"fast"``.
    :param max_iter: APGD steps per run, >= 1 (100 in AutoAttack).
    :param targets: APGD-T target classes per sample, in [1, nb_classes - 1] (9 in AutoAttack; capped there).
    :param square_queries: Square's query budget, >= 1 (5000 in AutoAttack).
    :param batch_size: Batch size.
    :param verbose: Progress bars.
    """

    attack_params = EvasionAttack.attack_params + ["eps", "norm", "preset", "max_iter", "targets", "square_queries",
                                                   "batch_size", "verbose"]
    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin)

    def __init__(
        self,
        estimator: Any,
        eps: float = 8 / 255,
        norm: float = np.inf,
        preset: str = "standard",
        max_iter: int = 100,
        targets: int = 9,
        square_queries: int = 5000,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        super().__init__(estimator=estimator)
        self.eps = eps
        self.norm = norm
        self.preset = preset
        self.max_iter = max_iter
        self.targets = targets
        self.square_queries = square_queries
        self.batch_size = batch_size
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        check_range("eps", self.eps, 0.0, float("inf"), low_open=True, high_open=True)
        if self.norm not in (np.inf, 2, "inf"):
            raise ValueError(f"`norm` must be np.inf or 2, got {self.norm!r}.")
        check_choice("preset", self.preset, tuple(PRESETS))
        check_int("max_iter", self.max_iter)
        check_int("targets", self.targets)
        check_int("square_queries", self.square_queries)
        check_int("batch_size", self.batch_size)
        if importlib.util.find_spec("multiprocess") is None:
            raise ImportError(MULTIPROCESS_MESSAGE)

    def _attacks(self) -> list[tuple[str, EvasionAttack]]:
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

        norm = np.inf if self.norm == "inf" else self.norm
        common = {"norm": norm, "eps": self.eps, "eps_step": 2 * self.eps, "max_iter": self.max_iter,
                  "nb_random_init": 1, "batch_size": self.batch_size, "verbose": False}
        out: list[tuple[str, EvasionAttack]] = []
        for name in PRESETS[self.preset]:
            if name == "apgd-ce":
                out.append((name, AutoProjectedGradientDescent(self.estimator, loss_type="cross_entropy",
                                                               targeted=False, **common)))
            elif name == "apgd-dlr":
                out.append((name, AutoProjectedGradientDescent(self.estimator, loss_type="difference_logits_ratio",
                                                               targeted=False, **common)))
            elif name == "apgd-t":
                out.append((name, AutoProjectedGradientDescent(self.estimator, loss_type="difference_logits_ratio",
                                                               targeted=True, **common)))
            else:
                out.append((name, SquareAttack(self.estimator, norm=norm, eps=self.eps, max_iter=self.square_queries,
                                               p_init=0.8, nb_restarts=1, batch_size=self.batch_size,
                                               verbose=False)))
        return out

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """
        The ensemble's adversarial examples.

        :param x: Inputs (numpy).
        :param y: True labels (indices or one-hot); default: the model's predictions.
        :return: Adversarial examples; a sample no attack breaks is returned unchanged.
        """
        x = np.asarray(x, dtype=np.float32)
        nb_classes = self.estimator.nb_classes
        predictions = self.estimator.predict(x, batch_size=self.batch_size).argmax(1)
        labels = predictions if y is None else (np.asarray(y).argmax(1) if np.ndim(y) == 2 else np.asarray(y))
        labels = labels.astype(np.int64)
        x_adv = x.copy()
        robust = predictions == labels
        self.best_attack = np.full(len(x), "", dtype=object)
        for name, attack in tqdm(self._attacks(), desc="AutoAttack", disable=not self.verbose):
            if name == "apgd-t":
                logits = self.estimator.predict(x, batch_size=self.batch_size)
                logits[np.arange(len(x)), labels] = -np.inf
                order = np.argsort(-logits, axis=1)[:, : min(self.targets, nb_classes - 1)]
                runs: list[np.ndarray | None] = [order[:, k] for k in range(order.shape[1])]
            else:
                runs = [None]
            for target in runs:
                index = np.flatnonzero(robust)
                if len(index) == 0:
                    break
                wanted = labels[index] if target is None else target[index]
                candidate = attack.generate(x[index], np.eye(nb_classes, dtype=np.float32)[wanted])
                broken = self.estimator.predict(candidate, batch_size=self.batch_size).argmax(1) != labels[index]
                x_adv[index[broken]] = candidate[broken]
                self.best_attack[index[broken]] = name
                robust[index[broken]] = False
            logger.debug("AutoAttack %s: %d of %d samples still robust.", name, int(robust.sum()), len(x))
        return x_adv
