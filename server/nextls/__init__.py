"""nextls: explain why a Python function fails its tests, and offer a verified fix (NExT)."""

__version__ = "0.1.0"
