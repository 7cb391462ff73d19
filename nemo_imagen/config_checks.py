"""Small checks shared by the typed configs of every layer (`modules/`, `text/`, `data/`, ...)."""
from typing import Any


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's `True` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
