"""The project's error style for the command lines: errors a user can fix (a missing or malformed file, a wrong
setting) derive from `UserError`, and `run_cli` prints them as ONE line, `error: <message>`, with exit status 2.

Exit statuses of every entry point (`python -m vsr1_jax.main`, `vsr1_jax.convert`, `benchmarks.*`):
  0    done
  1    an unexpected failure (a bug or the machine: the traceback is printed)
  2    a user error: the message names the file or config field and the fix (`--verbose` adds the traceback)
  130  stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM (training saves a checkpoint first; rerun to resume)

Base layer: nothing of vsr1_jax is imported here, so every module can derive its errors from `UserError`.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
VERBOSE_FLAG = "--verbose"


class UserError(Exception):
    """An error the user can fix; its message names the file (and line) or config field and how to fix it."""


class ConfigOverrideError(UserError):
    """A `--config.x.y=...` override names no config field or gives it a value of the wrong type."""


class SetupError(UserError, RuntimeError):
    """A missing folder or checkpoint; the message names it and the command that produces it."""


class Stopped(Exception):
    """A run stopped early by SIGINT / SIGTERM after saving what it had; the message says where it stopped and how
    to resume. Exit status 128 + the signal (130 / 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def one_line(exc: BaseException) -> str:
    """`error: <message>` on one line (newlines of the message become "; ")."""
    parts = [p.strip() for p in str(exc).splitlines() if p.strip()]
    return "error: " + "; ".join(parts or [type(exc).__name__])


def report(exc: BaseException, verbose: bool) -> int:
    """Print `exc` in the error style to stderr; returns the exit status for it."""
    if verbose:   # an error made from another one (not raised itself) shows where that one came from
        unraised = exc.__traceback__ is None and exc.__cause__ is not None
        traceback.print_exception(exc.__cause__ if unraised else exc, file=sys.stderr)
    print(one_line(exc), file=sys.stderr)
    return EXIT_USER_ERROR


def split_verbose(argv: Sequence[str] | None) -> tuple[list[str], bool]:
    """(argv without `--verbose`, whether it was there). argv None = sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [a for a in argv if a != VERBOSE_FLAG], VERBOSE_FLAG in argv


def run_cli(main_fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main_fn(argv)` (argv without `--verbose`) and map the project's errors to one line: a `UserError`
    prints `error: ...` and returns 2 (the traceback too with `--verbose`); a `Stopped` run prints its message and
    returns 130 / 143; Ctrl-C elsewhere returns 130. Anything else
    propagates with its traceback (a bug). Use as `sys.exit(run_cli(main))`."""
    argv, verbose = split_verbose(argv)
    try:
        return int(main_fn(argv) or 0)
    except UserError as e:
        return report(e, verbose)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT


__all__ = ["ConfigOverrideError", "EXIT_SIGINT", "EXIT_SIGTERM", "EXIT_USER_ERROR", "SetupError", "Stopped",
           "UserError", "one_line", "report", "run_cli", "split_verbose"]
