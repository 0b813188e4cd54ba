"""Package version (single source of truth, read by pyproject via setuptools)."""

__version__ = "0.1.0"
