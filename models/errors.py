"""Exception root of the models package."""

from __future__ import annotations


class ModelError(Exception):
    """Root of every error raised by `models`: a broken invariant, not bad event data."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, damaged, tampered with or of an unknown format."""
