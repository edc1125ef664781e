"""Single source of the package version (also stamped into generated/manifest.json)."""

__version__ = "0.1.0"
