"""Flow parameters: the JSON schema of a flow's signature, and checks against it.

The CLI builds the schema from the flow's signature with pydantic and validates fully; the server
holds only the schema, so it checks what a schema check without the code can: unknown names,
missing required ones, and top-level JSON types. The runner validates and coerces again at start.
"""

from __future__ import annotations

from typing import Any

from ostinato.deploy.errors import InvalidInput

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def check_parameters(schema: dict[str, Any], parameters: dict[str, Any], *, complete: bool) -> None:
    """Raise InvalidInput naming the first parameter that the schema refuses.

    `complete` means these are all the parameters a run will get, so required ones must be there.
    """
    properties: dict[str, Any] = schema.get("properties", {})
    if not schema:
        return
    unknown = sorted(set(parameters) - set(properties))
    if unknown:
        known = ", ".join(sorted(properties)) or "none"
        raise InvalidInput(f"unknown parameter {unknown[0]!r} (the flow takes: {known})")
    if complete:
        missing = [name for name in schema.get("required", []) if name not in parameters]
        if missing:
            raise InvalidInput(f"missing required parameter {missing[0]!r}")
    for name, value in parameters.items():
        _check_type(name, properties[name], value)


def _check_type(name: str, prop: dict[str, Any], value: Any) -> None:
    allowed = _declared_types(prop)
    if not allowed:
        return
    if isinstance(value, bool) and "boolean" not in allowed:
        ok = False
    else:
        ok = any(isinstance(value, _JSON_TYPES.get(t, object)) for t in allowed)
    if not ok:
        raise InvalidInput(
            f"parameter {name!r} must be {' or '.join(sorted(allowed))}, got {value!r}"
        )


def _declared_types(prop: dict[str, Any]) -> set[str]:
    """Top-level JSON types a property allows; empty when it allows anything or is too complex."""
    if "type" in prop:
        declared = prop["type"]
        return {declared} if isinstance(declared, str) else set(declared)
    options = prop.get("anyOf") or prop.get("oneOf")
    if options and all("type" in option for option in options):
        return set().union(*(_declared_types(option) for option in options))
    return set()
