"""The gallery's own errors: each says which file (or model, or field) and what to do."""

from __future__ import annotations


class GalleryError(Exception):
    """Base class of every error the gallery raises on purpose.

    The command line prints these without a traceback and exits with `exit_code`.
    """

    exit_code = 2


class CheckpointError(GalleryError):
    """A checkpoint file cannot be used; `path` names it, `problem` says why."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafeCheckpointError(CheckpointError):
    """The pickle stream asks to import or call something outside the allowed set."""


class EnvironmentNotAvailable(GalleryError):
    """The environment a checkpoint was trained on cannot be created here."""


class UsageError(GalleryError):
    """A command-line or API value that cannot be used."""
