"""JSON values the API accepts: what every backend can store and serialise back.

Objects are capped in depth (nothing legitimate nests deeper); NUL characters and the
non-standard NaN/Infinity are refused, since PostgreSQL's JSONB can hold neither. Parameters are
also capped in size: each run stores a copy and every listing of runs returns it.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import AfterValidator

from ostinato.deploy.limits import MAX_PARAMETERS_BYTES

MAX_JSON_DEPTH = 32


def storable(value: Any, depth: int = 0) -> Any:
    """`value` itself if every backend can store it; ValueError saying why not otherwise."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number")
    if isinstance(value, dict):
        for key, child in value.items():
            storable(key, depth + 1)
            storable(child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            storable(child, depth + 1)
    return value


def within_parameters_cap(value: dict[str, Any]) -> dict[str, Any]:
    """`value` if its compact JSON fits MAX_PARAMETERS_BYTES; ValueError saying its size if not."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PARAMETERS_BYTES:
        raise ValueError(f"{size} bytes as JSON, over the {MAX_PARAMETERS_BYTES}-byte cap")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(storable)]
JsonValue = Annotated[Any, AfterValidator(storable)]
# Flow parameters (a deployment's, a schedule's, a manual run's) and the schema describing them.
Parameters = Annotated[JsonObject, AfterValidator(within_parameters_cap)]


def jsonable(value: Any, cap: int) -> Any:
    """`value` if the server can store it exactly (JSON it accepts, at most `cap` characters),
    else its repr cut to `cap`: a result is always shown, and never refused."""
    try:
        text = json.dumps(storable(value), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and len(text) <= cap:
        return value
    try:
        shown = repr(value).replace("\x00", "\ufffd")
    except Exception:  # noqa: BLE001 (a user's __repr__ may raise anything)
        shown = f"<{type(value).__qualname__} object>"
    return shown if len(shown) <= cap else shown[:cap - 1] + "…"
