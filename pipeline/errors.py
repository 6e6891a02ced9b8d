"""Errors a user can act on: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class SamlabelError(Exception):
    """A problem with the user's input, settings or environment, with a message that says the fix.

    Args:
        message: the message, worded for a Python caller (options named as arguments: ``detector=``).
        cli: the same message worded for the command line (``--detector PATH``), where the two differ;
            the CLI prints ``cli_message``.
    """

    def __init__(self, message: str = "", *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli if cli is not None else message


class WeightsNotFoundError(SamlabelError, FileNotFoundError):
    """Model weights are neither on disk nor downloadable."""


class ImageReadError(SamlabelError, ValueError):
    """One image cannot be decoded; the run skips it and reports why."""
