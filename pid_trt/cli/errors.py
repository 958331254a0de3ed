"""How the CLI reports failures: one line on stderr, a non-zero exit code, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from pid_trt.errors import PidTrtError
from pid_trt.quoting import printable

F = TypeVar("F", bound=Callable)

#: Longest message the CLI prints, in characters (each untrusted value in it is capped where
#: it is quoted; this is the last defence for a message that was not).
MESSAGE_LIMIT = 2000

#: Exit code for bad input / unsupported requests (the user can fix it).
EXIT_USAGE = 2
#: Exit code for environment problems (missing optional package, no GPU, I/O failure).
EXIT_ENV = 3


def safe_line(message: object) -> str:
    """``message`` as one printable line: white space runs joined into one space, any control
    or invisible format character left escaped (:func:`pid_trt.quoting.printable`), capped."""
    return printable(" ".join(str(message).split()), MESSAGE_LIMIT)


def report(message: str) -> None:
    """Print one ``error:`` line to stderr (:func:`safe_line`)."""
    typer.echo(f"error: {safe_line(message)}", err=True)


def exit_code(exc: BaseException) -> int:
    """The exit code of a failure, the CLI's one mapping: 130 for Ctrl-C; for an error that
    carries a ``kind`` (a server's answer), :data:`EXIT_USAGE` when it is ``invalid``, else
    :data:`EXIT_ENV`; :data:`EXIT_ENV` for a missing backend, a resource limit or an I/O
    failure; :data:`EXIT_USAGE` for the project's other errors; :data:`EXIT_ENV` otherwise."""
    from pid_trt.errors import BackendUnavailableError, ResourceError

    if isinstance(exc, KeyboardInterrupt):
        return 130
    kind = getattr(exc, "kind", None)
    if kind is not None:
        return EXIT_USAGE if kind == "invalid" else EXIT_ENV
    if isinstance(exc, (BackendUnavailableError, ResourceError, OSError)):
        return EXIT_ENV
    return EXIT_USAGE if isinstance(exc, PidTrtError) else EXIT_ENV


def one_line(exc: BaseException) -> str:
    """The failure's message on one line: an I/O error as ``reason (file)``, a server's
    answer with its ``kind`` appended (unless ``invalid``)."""
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror or exc} ({printable(exc.filename)})"
    else:
        text = str(exc) or type(exc).__name__
    kind = getattr(exc, "kind", None)
    text = safe_line(text)
    return f"{text} ({kind})" if kind and kind != "invalid" else text


def cli_errors(fn: F) -> F:
    """Decorate a command so the project's errors become one-line messages and exit codes
    (:func:`one_line`, :func:`exit_code`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PidTrtError, OSError) as exc:
            report(one_line(exc))
            raise typer.Exit(exit_code(exc)) from None
        except KeyboardInterrupt as exc:
            report("interrupted")
            raise typer.Exit(exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> None:
    """Print one ``warning:`` line to stderr."""
    print(f"warning: {safe_line(message)}", file=sys.stderr)
