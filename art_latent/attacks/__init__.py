"""
Attacks for evaluating latent defenses, as ART ``EvasionAttack`` subclasses.

:class:`~art_latent.attacks.latent.LatentPGD` attacks the hidden features that a latent defense regularizes (after
LAFEAT, Yu et al., CVPR 2021); :class:`~art_latent.attacks.autoattack.AutoAttackEnsemble` runs AutoAttack's standard
and fast ensembles from ART's APGD and Square attacks.
"""

from art_latent.attacks.autoattack import AutoAttackEnsemble
from art_latent.attacks.latent import LatentPGD

__all__ = ["AutoAttackEnsemble", "LatentPGD"]
