"""The package version (one place; pyproject.toml repeats it for the build)."""

VERSION = "0.1.0"
