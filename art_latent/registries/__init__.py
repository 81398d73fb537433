"""
The registries: where to add a trainer (:mod:`art_latent.registries.trainers`) or an evaluation attack
(:mod:`art_latent.registries.evaluation_attacks`). The benchmark configuration, the protocol, the robustness report,
the command line and the parametrised tests read them. Importing them loads neither torch nor ART.
"""
