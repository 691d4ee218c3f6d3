"""JSON values the API accepts: objects capped in depth, so they can always be stored and
serialised back (nothing legitimate nests deeper)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

MAX_JSON_DEPTH = 32


def _not_too_deep(value: Any, depth: int = 0) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value
    for child in children if isinstance(value, dict | list) else ():
        _not_too_deep(child, depth + 1)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_not_too_deep)]
