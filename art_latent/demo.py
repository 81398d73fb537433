"""Old import path of :mod:`art_latent.experiments.demo`, kept so that existing imports keep working."""

from art_latent.experiments.demo import (
    DEFAULT_EPS_255,
    DEFAULT_SEEDS,
    conclusion,
    format_table,
    run_demo,
    summarize,
)

__all__ = ["DEFAULT_EPS_255", "DEFAULT_SEEDS", "conclusion", "format_table", "run_demo", "summarize"]
