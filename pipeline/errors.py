"""Errors a user can act on: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class SamlabelError(Exception):
    """A problem with the user's input, settings or environment, with a message that says the fix."""


class WeightsNotFoundError(SamlabelError, FileNotFoundError):
    """Model weights are neither on disk nor downloadable."""


class ImageReadError(SamlabelError, ValueError):
    """One image cannot be decoded; the run skips it and reports why."""
