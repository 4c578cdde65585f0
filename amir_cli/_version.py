"""The package version, in a module that imports nothing of ours (so jobs never import the package root)."""

__version__ = "0.1.0"
