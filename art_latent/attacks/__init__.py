"""
Adaptive attacks against latent defenses, as ART ``EvasionAttack`` subclasses.

:class:`~art_latent.attacks.latent.LatentPGD` attacks the hidden features that a latent defense regularizes (after
LAFEAT, Yu et al., CVPR 2021).
"""

from art_latent.attacks.latent import LatentPGD

__all__ = ["LatentPGD"]
