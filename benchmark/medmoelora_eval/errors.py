"""Show a `medmoelora.errors.UserError` that escapes to the top of the stock ``lm_eval`` CLI as one line.

lm-eval catches nothing around model construction and evaluation, so Python would print a traceback
of lm-eval's internals for a mistake such as a wrong adapter path. An uncaught `UserError` is the
user's mistake, not a bug: print ``error: <message>`` instead (exit status 1, as for any uncaught
exception). Callers that catch the exception themselves see it unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from medmoelora.errors import UserError


def _print_user_errors(previous: object) -> object:
    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        if isinstance(error, UserError):
            print(f"error: {error}", file=sys.stderr)
        else:
            previous(kind, error, traceback)  # type: ignore[operator]

    hook.prints_user_errors = True  # type: ignore[attr-defined]
    return hook


@contextmanager
def one_line_user_errors() -> Iterator[None]:
    """Re-raise a `UserError` after making sure that, uncaught, it prints as one line.

    A context manager, or a decorator (``@one_line_user_errors()``) for functions that lm-eval calls."""
    try:
        yield
    except UserError:
        if not getattr(sys.excepthook, "prints_user_errors", False):
            sys.excepthook = _print_user_errors(sys.excepthook)
        raise
