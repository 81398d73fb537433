"""
Reproducible benchmarks: the k-fold fine-tuning protocol of paper 000 (Schwartz & Ditzler, IJCNN 2021, §IV) driven by
a TOML configuration, with per-fold JSON results (resumable), mean and confidence intervals over folds, the paper's
figures and a ``report.md``.

.. code-block:: python

    from art_latent.experiments import load_config, run_benchmark

    results = run_benchmark(load_config("configs/quick.toml"), "results/")
"""

from art_latent.experiments.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from art_latent.experiments.protocol import run_benchmark, run_fold
from art_latent.experiments.registry import resolve_trainer
from art_latent.experiments.summary import aggregate, render_report

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "aggregate",
    "config_from_dict",
    "load_config",
    "render_report",
    "resolve_trainer",
    "run_benchmark",
    "run_fold",
]
