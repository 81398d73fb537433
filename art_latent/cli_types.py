"""Old import path of :mod:`art_latent.cli.arguments`, kept so that existing imports keep working."""

from art_latent.cli.arguments import HelpFormatter, Parser, budget, non_negative_float, positive_int

__all__ = ["HelpFormatter", "Parser", "budget", "non_negative_float", "positive_int"]
