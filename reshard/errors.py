"""Errors with the exit codes the CLI maps them to. Scripts rely on these numbers; they are
documented in ``reshard/__init__.py`` and ``python -m reshard --help``."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad command line, or options the model cannot take (tp does not divide heads)
EXIT_BAD_INPUT = 3  # unreadable, corrupt, truncated, mismatched or incomplete checkpoint
EXIT_VERIFY_FAILED = 4  # `verify` found a checksum, structure or numerics mismatch
EXIT_UNSAFE_PICKLE = 5  # a pickle needs globals outside the allowlist; nothing was executed
EXIT_INTERNAL = 1  # a bug: anything not listed above


class ReshardError(Exception):
    """Base class; ``exit_code`` is what ``python -m reshard`` exits with."""

    exit_code = EXIT_BAD_INPUT


class UsageError(ReshardError):
    exit_code = EXIT_USAGE


class FormatError(ReshardError):
    """The input is not a checkpoint we can read, or it is corrupt or truncated."""

    exit_code = EXIT_BAD_INPUT


class ArchitectureError(FormatError):
    """No architecture in the checkpoint and no ``--arch``, or the two disagree."""


class MismatchError(FormatError):
    """Tensors are missing, unknown, or have shapes the architecture does not imply."""

    def __init__(self, message: str, *, missing: list[str] | None = None, unused: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unused = list(unused or [])


class UnsafePickleError(ReshardError):
    """A pickle refers to globals outside the allowlist. It was never executed."""

    exit_code = EXIT_UNSAFE_PICKLE

    def __init__(self, message: str, *, globals_found: list[str]) -> None:
        super().__init__(message)
        self.globals_found = list(globals_found)


class VerificationError(ReshardError):
    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])
