"""Small checks shared by the typed configs of every layer (`modules/`, `text/`, `data/`, ...), and the error
they raise for a user's mistake."""
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a config: the message names the key and what is allowed (the entry points print it
    as one line)."""


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's `True` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
