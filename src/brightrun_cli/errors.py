"""Domain errors: each carries a user-facing message and the exit code it maps to.

The CLI turns these into one stderr line (what, why, what to do) at a single place
(`cli.dispatch.failure_code`); everything else just raises.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REQUIREMENT_FAILED = 6  # a --require gate on a model's answer eval did not hold


def debug_enabled() -> bool:
    """BRIGHTRUN_DEBUG set (not 0): tracebacks and library warnings are shown."""
    return os.environ.get("BRIGHTRUN_DEBUG", "") not in ("", "0")


_SOLE_OWNER = False  # set by a program entry point that has its process to itself


def own_the_process() -> None:
    """Called by the `brightrun` executable and the trainer's `python -m` entry: nothing else
    runs in this process, so process-wide library settings may be made in it
    (generation.quantization.keep_bitsandbytes_out). Code run inside another program (a test
    session, a notebook) leaves them alone."""
    global _SOLE_OWNER
    _SOLE_OWNER = True


def owns_the_process() -> bool:
    return _SOLE_OWNER


def quiet_library_warnings() -> None:
    """Unless debugging: drop the ML libraries' deprecation notices to each other's
    developers (peft asking transformers for a renamed attribute, say), which say nothing
    a brightrun user can act on."""
    if not debug_enabled():
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def quiet_library_logs() -> None:
    """Unless debugging, before importing peft: bitsandbytes' log line on CPUs with
    AVX512-BF16, which every peft import prints where the `qlora` extra is installed (it
    fails to fetch an optional CPU inference kernel from the Hugging Face Hub, offline or
    from an unverified publisher, and falls back to its own; a CUDA run is unaffected)."""
    if not debug_enabled():
        import logging

        for library in ("bitsandbytes", "kernels"):
            logging.getLogger(library).setLevel(logging.ERROR)


class BrightrunError(Exception):
    """Base class. `message` is shown to the user as is; `hint` says what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(BrightrunError):
    """Bad input from the user (flags, files, names): exit 2, nothing changed."""

    exit_code = EXIT_USAGE


class NotFoundError(UsageError):
    """An id, prefix or name that resolves to nothing (or to more than one thing)."""


class AmbiguousError(UsageError):
    """A reference (an id prefix, a name) that matches more than one thing: exit 2 with the candidates."""


class ConflictError(UsageError):
    """The request clashes with current state (duplicate name, object in use)."""


class OperationError(BrightrunError):
    """The operation was valid but failed while running: exit 1."""


class RegistryError(OperationError):
    """The registry cannot be opened or used (newer schema, corrupt file, no access)."""


class RequirementFailed(BrightrunError):
    """A `--require` gate on a model's answer eval did not hold: exit 6 (for CI)."""

    exit_code = EXIT_REQUIREMENT_FAILED
