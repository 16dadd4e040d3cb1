"""Exceptions the CLI answers with one line: exit status 2 for bad input, 1 for a failed run."""


class ConfigError(ValueError):
    """A configuration problem; the message names the key and how to fix it."""


class UsageError(Exception):
    """Bad input found by the CLI itself (exit status 2)."""


class TrainingError(RuntimeError):
    """Training cannot go on, e.g. the loss keeps diverging (exit status 1)."""
