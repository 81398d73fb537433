"""Old import path of :mod:`art_latent.cli.lsa`, kept so that existing imports keep working."""

from art_latent.cli import lsa
from art_latent.cli.lsa import format_lsa, run_lsa

__all__ = ["add_lsa_parser", "format_lsa", "main_lsa", "run_lsa"]

#: :func:`art_latent.cli.lsa.add_parser`.
add_lsa_parser = lsa.add_parser
#: :func:`art_latent.cli.lsa.run`.
main_lsa = lsa.run
