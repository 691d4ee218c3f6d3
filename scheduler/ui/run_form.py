"""The "Run now" form of a deployment: one input per parameter of the flow's JSON schema.

The schema is the one pydantic made from the flow's signature at `deployment create`; the form
offers what a person can type without knowing JSON — text, numbers, a checkbox, a choice — and
a JSON textarea for anything else (lists, objects, unions). Each input is prefilled with the
value a run would get without it (the deployment's parameter, else the flow's default), so
submitting the form untouched runs what the schedule would. `static/ui.js` reads the inputs by
their `data-parameter` and `data-type` and posts them to the API, which checks them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["text", "number", "checkbox", "select", "textarea"]
DataType = Literal["string", "integer", "number", "boolean", "json"]
_SCALARS: dict[str, tuple[Kind, DataType]] = {
    "string": ("text", "string"), "integer": ("number", "integer"), "number": ("number", "number")}
_MISSING = object()


@dataclass(frozen=True)
class Option:
    value: str
    label: str
    selected: bool


@dataclass(frozen=True)
class Field:
    """One input: how it is drawn (`kind`), how ui.js reads it (`data_type`), its prefill."""

    name: str  # the label too: what `--param` and the flow's signature call it
    description: str
    kind: Kind
    data_type: DataType
    value: str  # the prefill of a text, number or JSON input
    checked: bool
    required: bool
    step: str | None
    options: list[Option]


def form_fields(schema: dict[str, Any], defaults: dict[str, Any]) -> list[Field]:
    """The inputs for a parameter schema; with no schema (a flow the server does not know), one
    JSON input per parameter the deployment sets.

    The required parameters come first, in the schema's order, then the others by name: the
    order of the schema's properties is lost on PostgreSQL (JSONB keeps no key order), the
    order of its `required` list is not, and the form must read the same on either backend.
    """
    properties = schema.get("properties") or {name: {} for name in defaults}
    required = [name for name in schema.get("required") or [] if name in properties]
    names = required + sorted(set(properties) - set(required))
    definitions = schema.get("$defs") or {}
    return [_field(name, _resolved(properties[name], definitions), name in required, defaults)
            for name in names]


def _resolved(prop: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """The property with a local `$ref` (how pydantic writes enums) merged in, and a nullable
    union (`X | None`: anyOf X, null) read as X marked `nullable`."""
    ref = prop.get("$ref", "")
    if ref.startswith("#/$defs/"):
        rest = {key: value for key, value in prop.items() if key != "$ref"}
        prop = {**definitions.get(ref.removeprefix("#/$defs/"), {}), **rest}
    options = prop.get("anyOf") or prop.get("oneOf") or []
    others = [o for o in options if o.get("type") != "null"]
    if len(options) == 2 and len(others) == 1:
        rest = {key: value for key, value in prop.items() if key not in ("anyOf", "oneOf")}
        return {**_resolved(others[0], definitions), **rest, "nullable": True}
    types = prop.get("type")
    if isinstance(types, list) and len(types) == 2 and "null" in types:
        return {**prop, "type": next(t for t in types if t != "null"), "nullable": True}
    return prop


def _field(name: str, prop: dict[str, Any], required: bool, defaults: dict[str, Any]) -> Field:
    default = defaults.get(name, prop.get("default", _MISSING))
    given = default is not _MISSING and default is not None
    kind, data_type = _kind(prop)
    options = _options(prop["enum"], data_type, default, given) if kind == "select" else []
    return Field(
        name=name, description=str(prop.get("description") or ""),
        kind=kind, data_type=data_type, value=_text(default, data_type) if given else "",
        checked=default is True, required=required and kind != "checkbox",
        step={"integer": "1", "number": "any"}.get(data_type) if kind == "number" else None,
        options=options,
    )


def _kind(prop: dict[str, Any]) -> tuple[Kind, DataType]:
    """A choice for an enum, a checkbox for a plain boolean (a nullable one has three values),
    text or number for scalars, JSON for the rest."""
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return "select", _enum_type(prop["enum"])
    declared = prop.get("type")
    if declared == "boolean" and not prop.get("nullable"):
        return "checkbox", "boolean"
    if isinstance(declared, str) and declared in _SCALARS:
        return _SCALARS[declared]
    return "textarea", "json"


def _enum_type(values: list[Any]) -> DataType:
    """What ui.js must turn the chosen option's text into: one scalar type, or JSON."""
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    return "json"


def _text(value: Any, data_type: DataType) -> str:
    """A value as its input shows it: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) and data_type == "string" else json.dumps(value)


def _options(values: list[Any], data_type: DataType, default: Any, given: bool
             ) -> list[Option]:
    """The choices, the default selected; an empty first choice when nothing is chosen yet
    (ui.js leaves an empty optional choice out; the browser refuses an empty required one)."""
    choices = [Option(_text(v, data_type), str(v) if isinstance(v, str) else json.dumps(v),
                      given and v == default) for v in values]
    return choices if given else [Option("", "choose…", True), *choices]
