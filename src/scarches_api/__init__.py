"""scarches-api: map single-cell query data onto reference atlases by scArches surgery on scvi-tools models."""

__version__ = "0.1.0"
