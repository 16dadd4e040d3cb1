"""Exceptions the CLI answers with one line (configuration errors live in config.py)."""


class UsageError(Exception):
    """Bad input found by the CLI itself (exit status 2)."""


class TrainingError(RuntimeError):
    """Training cannot go on, e.g. the loss keeps diverging (exit status 1)."""
