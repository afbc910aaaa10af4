"""The package's version: one home, read by the build (hatch) and by the server's answers."""

__version__ = "0.1.0"
