"""Typed configuration models: plain dataclasses with defaults, and the machinery every
subsystem's model shares: `check` (a refusal naming the key), `merge` (a nested mapping onto a
dataclass, each value's type checked, not converted), YAML that refuses duplicate keys and
reads numbers as JSON does (`ConfigLoader`, and `ConfigDumper` to write it), and a JSON schema
from the dataclasses. Each subsystem owns its model (`labeler/config.py`, `qp/config.py`,
...); `config.py` composes them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

MAX_NUMBER_CHARS = 40  # a double needs 24 characters; Python takes seconds over 100,000 digits
_SHOWN = 80  # characters of a refused value an error message quotes
# a key so named (`mqtt.password`) holds a secret: its refused value is never quoted
SECRET_NAMES = ("password", "passphrase")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {key}: {shown_at(key, value)} (expected "
                          f"{allowed})", key)


def shown_at(key: str, value: Any) -> str:
    """`value` as a refusal of `key` quotes it: '***' for a secret's (a password given as a
    number is still a password, and the error goes to the log)."""
    secret = key.rpartition(".")[2].lower().endswith(SECRET_NAMES)
    return "'***'" if secret else shown(value)


def shown(value: Any) -> str:
    """A value as an error message quotes it: repr (one line), at most about 80 characters."""
    text = repr(value)
    size = len(value) if isinstance(value, str) else len(text)  # a text's own, not its quotes'
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({size} characters)"


def merge(obj: Any, data: dict[str, Any], prefix: str, text: bool = False) -> None:
    """Apply a nested dict onto a dataclass, checking each value's type (`coerce`). `text`: the
    values come from the command line (`--set`), where every value is text."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".")
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}",
                          where or None)
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"key {shown(key)} under {prefix.rstrip('.') or 'the top'} is not "
                              "a name", prefix.rstrip(".") or None)
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {shown(path)} (known: "
                              f"{', '.join(sorted(names))})", path)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if text and isinstance(value, str):
                value = parse_text(value)
            merge(current, value, path + ".", text)
        elif isinstance(current, dict):  # tables merge: setting one entry keeps the others
            setattr(obj, key, {**current, **coerce(value, hints[key], path, text)})
        else:
            setattr(obj, key, coerce(value, hints[key], path, text))


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(value: Any, hint: Any, path: str, text: bool = False) -> Any:
    """`value` checked against the type `hint`, never converted from another type: a string is
    not a number, a number is not a string, null is neither (a refusal names `path`). An int
    may be given as an integral float (JSON has one number type); the entries of a table of
    strings (x264 options) may be numbers, kept as their text.

    `text`: the value comes from `--set KEY=VALUE`, where everything is text: a string key
    takes it as it is, another key reads it as YAML, a list also as comma-separated names."""
    origin = get_origin(hint)
    if text and isinstance(value, str) and hint is not str:
        value = parse_text(value)
        if origin is list and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        text = False
    if origin is list and isinstance(value, list):
        (item,) = get_args(hint)
        return [coerce(v, item, path, text) for v in value]
    if origin is dict and isinstance(value, dict):
        _, item = get_args(hint)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(f"invalid key {shown(k)} in {path} (expected a name)", path)
            if item is str and _is_number(v):
                v = str(v)
            out[k] = coerce(v, item, f"{path}.{k}", text)
        return out
    if hint is Any:
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and _is_number(value) and (isinstance(value, int) or value.is_integer()):
        return int(value)
    if hint is float and _is_number(value):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            number = math.inf
        if math.isfinite(number):  # inf and NaN would pass every range check
            return number
    if hint is str and isinstance(value, str):
        return value
    kind = {list: "a list", dict: "a mapping"}.get(origin) or _KINDS.get(hint, str(hint))
    if hint is int and isinstance(value, str) and value[-1:] in ("k", "M"):
        kind += "; only --bitrate takes k and M: 2M is 2000000 here"
    raise ConfigError(f"invalid value for {path}: {shown_at(path, value)} (expected {kind})",
                      path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_text(raw: str) -> Any:
    """A `--set` value read as YAML (`1.5`, `true`, `[a, b]`); text that is not YAML stays
    text."""
    if not raw.strip():
        return ""
    try:
        return yaml.load(raw, Loader=ConfigLoader)
    except yaml.YAMLError:
        return raw


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line, with where it is: "expected ',' or '}', but got '<stream
    end>' at line 3, column 1 (while parsing a flow mapping from line 2, column 10)"."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if not problem:
        return str(e).splitlines()[0]
    text = problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark else "")
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        text += f" ({context}" + (f" from line {start.line + 1}, column {start.column + 1}"
                                  if start else "") + ")"
    return text


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class ConfigLoader(yaml.SafeLoader):
    """YAML for configuration files, `--set` values and remote changes. Unlike plain YAML: a
    key given twice is an error (YAML keeps the last one, silently); a key is a name, not a
    list or a mapping; numbers are those of JSON and YAML 1.2 (`1e5` is a number, not the
    string YAML 1.1 makes of it; YAML 1.1's sexagesimal `1:30` (90) and octal `010` (8) are
    strings) and at most MAX_NUMBER_CHARS characters long; an explicit tag (`!!float "5"`) is
    refused: it would convert a value whose type is checked."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            tag = tag.replace("tag:yaml.org,2002:", "!!")
            raise yaml.composer.ComposerError(None, None, f"an explicit tag ({tag}) is not "
                                              "accepted: write the value itself",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name, not a list or a mapping",
                    key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_number(self, node):
        value = self.construct_scalar(node)
        if len(value) > MAX_NUMBER_CHARS or ":" in value:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number of {len(value)} characters (at most "
                f"{MAX_NUMBER_CHARS}, no ':')", node.start_mark)
        if node.tag == _INT:
            return self.construct_yaml_int(node)
        return self.construct_yaml_float(node)


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
ConfigLoader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:
    [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
ConfigLoader.add_constructor(_INT, ConfigLoader.construct_number)
ConfigLoader.add_constructor(_FLOAT, ConfigLoader.construct_number)


class ConfigDumper(yaml.SafeDumper):
    """YAML that ConfigLoader reads back as written: a string it would read as a number
    (`1e5`) is quoted."""


ConfigDumper.yaml_implicit_resolvers = ConfigLoader.yaml_implicit_resolvers


def schema_of(cls: type) -> dict[str, Any]:
    """JSON schema of a config dataclass (nested dataclasses become nested objects), each key
    described by its comment in the source (as in the reference, `reference_rows`)."""
    props: dict[str, Any] = {}
    defaults, comments = cls(), field_comments(cls)
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
        if comments.get(f.name):
            props[f.name]["description"] = comments[f.name]
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
