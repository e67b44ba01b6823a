"""One exception type for every mistake a user can make (config, data, paths, CLI arguments).

Every command line (``medmoelora`` and ``python -m medmoelora_eval.*``, through `command_main`) prints a
`UserError` as one line (``error: <message>``) and exits with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable, Iterable


class UserError(ValueError):
    """A bad input, with a message that names the culprit and says what to do."""


class ConfigError(UserError):
    """A config field with a value that is not allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"config field `{field}` = {value!r} is invalid: {allowed}")


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """`unknown <kind> 'x'; valid: a, b, c. Did you mean 'y'?` (lm-eval's registry habit)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UserError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")


def command_main(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a command line's ``main``: a `UserError` becomes ``error: <message>`` on stderr, return 2."""

    @functools.wraps(main)
    def run(*args: object, **kwargs: object) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run
