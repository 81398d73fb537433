"""
The model side of the k-fold protocol: the network of ``[model]`` (:func:`new_model`), its classifier with a fresh
optimizer (:func:`make_classifier`), and the pre-training every defense is fine-tuned from (:func:`pretrain`), cached
in ``pretrained.pt`` with a verified sidecar (:func:`load_pretrained`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from art_latent.experiments.config import ExperimentConfig
from art_latent.experiments.pool import Pool, Splits, seed_everything
from art_latent.experiments.registry import resolve_object
from art_latent.io import safe_load, sha256_file, write_json

logger = logging.getLogger(__name__)

__all__ = ["PRETRAINED", "load_pretrained", "make_classifier", "new_model", "pretrain"]

#: The cached pre-trained weights in a run directory (with the sidecar ``pretrained.pt.json``).
PRETRAINED = "pretrained.pt"


def new_model(config: ExperimentConfig, pool: Pool) -> Any:
    """
    Build the model of ``[model]`` for the pool's input shape and classes.

    :param config: The configuration.
    :param pool: The pool.
    :return: A ``torch.nn.Module``.
    """
    from art_latent.models import build_model

    spec = config.model
    if ":" in spec.name:
        import torch

        return resolve_object(spec.name, torch.nn.Module)(**spec.kwargs)
    kwargs = {"in_channels": pool.input_shape[0], "num_classes": pool.nb_classes, "input_size": pool.input_shape[1],
              **spec.kwargs}
    return build_model(spec.name, **kwargs)


def make_classifier(config: ExperimentConfig, model: Any, pool: Pool) -> Any:
    """
    Wrap `model` in a :class:`~art_latent.estimator.LatentClassifier` with a fresh optimizer of ``[optimizer]``.

    :param config: The configuration.
    :param model: The network.
    :param pool: The pool (input shape, classes).
    :return: The classifier.
    """
    import torch

    from art_latent.estimator import LatentClassifier

    spec = config.optimizer
    optimizer = getattr(torch.optim, spec.name)(model.parameters(), lr=spec.lr, **spec.kwargs)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), pool.input_shape, pool.nb_classes,
                            optimizer=optimizer, clip_values=(0.0, 1.0), device_type=config.device,
                            layers=config.model.layers)


def pretrain(
    config: ExperimentConfig, pool: Pool, splits: Splits, out: Path | None = None, verbose: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Pre-train the model on the pre-training subset (plain cross-entropy), or load the weights a previous run with
    the same data, model, optimizer, pre-training settings and seed saved in ``out/pretrained.pt``.

    With ``patience > 0`` training stops when the validation loss has not improved for ``patience`` epochs (the
    paper: 100 epochs of stagnation, at most 1000 epochs); the weights of the best validation loss are kept.

    :param config: The configuration.
    :param pool: The pool.
    :param splits: The splits.
    :param out: Run directory for the cached weights (``None``: no cache).
    :param verbose: Progress bars.
    :return: ``(state_dict on the CPU, info)`` with info ``{"epochs", "best_epoch", "history", "seconds"}``.
    """
    from art_latent.trainers.base import LatentTrainer

    digest = config.digest("seed", "device", "data", "model", "optimizer", "pretrain")
    path = None if out is None else Path(out) / PRETRAINED
    if path is not None and path.exists():
        cached = load_pretrained(path, digest)
        if cached is not None:
            logger.info("Loaded the pre-trained weights from %s.", path)
            return cached
        logger.info("%s was made with other settings, or could not be verified: pre-training again.", path)
    started = time.perf_counter()
    seed_everything(config.seed)
    model = new_model(config, pool)
    clf = make_classifier(config, model, pool)
    spec = config.pretrain
    validation = None
    if len(splits.validation):
        validation = (pool.x[splits.validation], pool.y[splits.validation])
    best: dict[str, Any] = {"loss": float("inf"), "epoch": 0, "state": None, "wait": 0}

    def keep_best(_trainer: Any, epoch: int, logs: dict[str, float]) -> bool:
        if validation is None:
            return False
        if logs["val_loss"] < best["loss"]:
            best.update(loss=logs["val_loss"], epoch=epoch + 1, wait=0,
                        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            best["wait"] += 1
        return bool(spec.patience) and best["wait"] >= spec.patience

    if verbose:
        print(f"Pre-training {config.model.name} on {len(splits.pretrain)} samples for up to {spec.epochs} epochs")
    trainer = LatentTrainer(clf, seed=config.seed)
    history = trainer.fit(pool.x[splits.pretrain], pool.y[splits.pretrain], validation_data=validation,
                          batch_size=spec.batch_size, nb_epochs=spec.epochs, callbacks=[keep_best], verbose=verbose)
    state = best["state"] or {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    info = {"epochs": len(history), "best_epoch": best["epoch"] or len(history),
            "history": [{k: v for k, v in h.items() if k != "time_s"} for h in history],
            "seconds": time.perf_counter() - started}
    if path is not None:
        from art_latent.weights import save_weights

        save_weights(path, state, model=config.model.name, model_kwargs=config.model.kwargs,
                     dataset=config.data.dataset, input_shape=pool.input_shape, nb_classes=pool.nb_classes,
                     digest=digest, info=info)
        write_json({"digest": digest, "sha256": sha256_file(path)}, path.with_name(path.name + ".json"))
    return state, info


def load_pretrained(path: Path, digest: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """
    The cached pre-trained weights, if their sidecar ``pretrained.pt.json`` names this configuration's digest and
    the file's SHA-256: both are checked before the file is read, and it is read with ``weights_only=True``, so a
    crafted file in the output directory is never deserialized as code.

    :param path: The cached weights (``pretrained.pt``).
    :param digest: The digest of the settings that made them (:meth:`ExperimentConfig.digest`).
    :return: ``(state_dict, info)`` as :func:`pretrain` returns them, or ``None`` when the file is absent, made with
             other settings, or cannot be verified or read safely.
    """
    sidecar = path.with_name(path.name + ".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("digest") != digest or meta.get("sha256") != sha256_file(path):
        return None
    try:
        saved = safe_load(path)
    except (OSError, ValueError) as error:  # any unpickling refusal: retrain rather than trust the file
        logger.warning("Ignoring %s: %s", path, error)
        return None
    if not isinstance(saved, dict):
        return None
    if saved.get("digest") != digest or not isinstance(saved.get("state_dict"), dict):
        return None
    return saved["state_dict"], saved["info"]
