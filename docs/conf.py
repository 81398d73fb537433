"""Sphinx configuration of the art_latent documentation (build: ``sphinx-build -W -b html docs docs/_build/html``)."""

import sys
from pathlib import Path

# The package is normally pip-installed (editable); the repository root on sys.path makes a plain checkout work too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import art_latent  # noqa: E402  (autodoc imports the real package: torch and ART must be installed)

project = "art_latent"
author = "art_latent developers"
copyright = "art_latent developers"  # noqa: A001
version = release = art_latent.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into _static/mathjax (PyPI package sphinx-mathjax-offline): equations render offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
]

# The parameters are documented in the __init__ docstrings (ART's convention): show class and __init__ docstrings.
autoclass_content = "both"
autodoc_member_order = "bysource"
# Show defaults as written in the source (``16 / 255``, not ``0.06274509803921569``).
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_css_files = ["custom.css"]

html_theme = "alabaster"
html_title = f"art_latent {release}"
html_theme_options = {
    "description": "Hidden-layer adversarial defenses for PyTorch models in IBM's ART",
    "fixed_sidebar": True,
    "page_width": "1100px",  # 120-character code lines (the project's line length) fit at the default font size
}
