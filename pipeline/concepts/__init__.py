"""Promptable-concept models (SAM 3): every instance of a noun phrase or of example boxes in an image."""
