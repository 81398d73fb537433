"""``python -m art_latent.cli``: the same as ``art-latent``."""

import sys

from art_latent.cli import main

sys.exit(main())
