"""Typed configuration models: plain dataclasses with defaults, and the machinery every
subsystem's model shares: `check` (a refusal naming the key), `merge` (a nested mapping onto a
dataclass, each value converted and type-checked), YAML that refuses duplicate keys, and a JSON
schema from the dataclasses. Each subsystem owns its model (`labeler/config.py`,
`qp/config.py`, ...); `config.py` composes them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {key}: {value!r} (expected {allowed})")


def merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Apply a nested dict onto a dataclass, converting and checking each value's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, path + ".")
        elif isinstance(current, dict):  # tables merge: setting one entry keeps the others
            setattr(obj, key, {**current, **coerce(value, hints[key], path)})
        else:
            setattr(obj, key, coerce(value, hints[key], path))


def coerce(value: Any, hint: Any, path: str) -> Any:
    origin = get_origin(hint)
    try:
        if origin is list:
            (item,) = get_args(hint)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise TypeError
            return [coerce(v, item, path) for v in value]
        if origin is dict:
            _, item = get_args(hint)
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): coerce(v, item, f"{path}.{k}") for k, v in value.items()}
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise TypeError  # inf and NaN would pass every range check
            return float(value)
        if hint is str:
            return "" if value is None else str(value)
    except ConfigError:  # an item's own error names the item
        raise
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"invalid value for {path}: {value!r} (expected {name})")


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error (plain YAML keeps the last one,
    silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def schema_of(cls: type) -> dict[str, Any]:
    """JSON schema of a config dataclass (nested dataclasses become nested objects)."""
    props: dict[str, Any] = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        hint = get_type_hints(cls)[f.name]
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):
            props[f.name] = schema_of(type(default))
            continue
        origin = get_origin(hint)
        kind = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(hint)
        if origin is list:
            items = ({"type": "string"} if get_args(hint)[0] is str else
                     {"anyOf": [{"type": "string"}, {"type": "object"}]})
            props[f.name] = {"type": "array", "items": items, "default": default}
        elif origin is dict:
            props[f.name] = {"type": "object", "default": default}
        else:
            props[f.name] = {"type": kind, "default": default}
    return {"type": "object", "properties": props, "additionalProperties": False}


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the dataclass's source (the lines above it and the one after it),
    so the reference documentation is generated from the code that defines the defaults."""
    import inspect

    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        m = re.match(r"(\w+)\s*:\s*[^=#]+=[^#]*(?:#\s*(.*))?$", text)
        if m and not text.startswith(("def ", "return ", "class ")):
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return out


def reference_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field, nested dataclasses flattened."""
    rows, defaults, comments = [], cls(), field_comments(cls)
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += reference_rows(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", json.dumps(value), comments.get(f.name, "")))
    return rows
