"""Sphinx configuration: MyST Markdown pages, the API reference from the
docstrings (autodoc), warnings as errors in CI (``-W``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from fastckpt._version import __version__  # noqa: E402

project = "fastckpt"
author = "the fastckpt developers"
copyright = "2026, the fastckpt developers"
release = version = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
