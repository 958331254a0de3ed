"""How the CLI reports failures: one line on stderr, a non-zero exit code, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from pid_trt.errors import PidTrtError

F = TypeVar("F", bound=Callable)

#: Exit code for bad input / unsupported requests (the user can fix it).
EXIT_USAGE = 2
#: Exit code for environment problems (missing optional package, no GPU, I/O failure).
EXIT_ENV = 3


def report(message: str) -> None:
    """Print one ``error:`` line to stderr."""
    first = " ".join(str(message).split())
    typer.echo(f"error: {first}", err=True)


def cli_errors(fn: F) -> F:
    """Decorate a command so the project's errors become one-line messages and exit codes."""
    from pid_trt.errors import BackendUnavailableError, ResourceError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (BackendUnavailableError, ResourceError) as exc:
            report(str(exc))
            raise typer.Exit(EXIT_ENV) from None
        except PidTrtError as exc:
            report(str(exc))
            raise typer.Exit(EXIT_USAGE) from None
        except OSError as exc:
            report(f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc))
            raise typer.Exit(EXIT_ENV) from None
        except KeyboardInterrupt:
            report("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> None:
    """Print one ``warning:`` line to stderr."""
    print(f"warning: {message}", file=sys.stderr)
