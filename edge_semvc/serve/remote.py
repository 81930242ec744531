"""Remote configuration: a partial document arriving on `<prefix>/<camera>/config/set`, checked
and turned into the camera's next configuration, and the changes kept across restarts.

Only keys that are safe to change while frames flow are accepted (`LIVE_KEYS`): the QP policy,
the analysis scaling, the labeler's class priority, label age and live share, the scene
description and the encoder's rate. Nothing remote can name a file, a model, an encoder, a
source or anything that executes; such keys are refused by name,
like unknown keys, wrong types, out-of-range values, malformed JSON/YAML and oversized payloads.
Every payload is hostile: it is read without YAML anchors or aliases (a 671-byte alias bomb
expands to gigabytes), at most `MAX_PAYLOAD_BYTES` long, `MAX_DEPTH` levels deep, with numbers
of at most `config_model.MAX_NUMBER_CHARS` characters, and whatever goes wrong reading it
becomes one `RemoteChangeRejected`. A refusal changes nothing. Accepted changes are merged
into the camera's persisted overrides (`<state_dir>/<camera>.yml`, written to a temporary file,
fsynced and renamed), so a restart applies them again after the configuration file.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..config_model import ConfigDumper, ConfigLoader, merge, shown, yaml_problem
from ..encoders.config import check_live_rate
from ..errors import ConfigError
from ..labeler.config import check_live_share

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_DEPTH = 8  # nesting levels of a payload (the deepest live key, qp.importance.x, is 3)
MAX_REASON_CHARS = 300  # of a refusal's reason (an event and a log line, not a payload echo)
# Dotted keys (or whole sections, ending in '.') a remote change may set. Each has a finite
# range, checked by its subsystem's validate() (README, "Service"); a test sets every one to
# extreme values. Adding a live key: one line here and its range there.
LIVE_KEYS = ("qp.", "analysis.", "labeler.priority", "labeler.max_age_s",
             "labeler.live_share",  # a busy box's models given less, an idle one's more
             "fusion.description",  # "watch the vehicles at the gate", from a dashboard
             "encoder.bitrate", "encoder.crf")  # following the link: at the next frame
NOT_LIVE = {"qp.device"}  # a backend choice: set in the configuration file, with a restart


class RemoteChangeRejected(ConfigError):
    """A remote change that was refused; `key` names the offending key where there is one."""


class RemoteLoader(ConfigLoader):
    """ConfigLoader without anchors or aliases and at most MAX_DEPTH levels deep: checked as
    the document is composed, before anything is expanded or recursed into."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&, *) are not "
                                              "accepted", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} "
                                                  "levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_change(payload: bytes) -> dict[str, Any]:
    """The nested mapping of a `config/set` payload (JSON or YAML), or RemoteChangeRejected
    (whatever the reason: an error of the YAML library or of Python's number parsing is one
    too)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise RemoteChangeRejected(f"payload of {len(payload)} bytes is over the "
                                   f"{MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RemoteChangeRejected(f"payload is not UTF-8 text (byte {e.start})") from None
    try:  # JSON is YAML; a key given twice is refused rather than silently taking the last
        doc = yaml.load(text, Loader=RemoteLoader)
    except yaml.YAMLError as e:
        raise RemoteChangeRejected(f"payload is not valid JSON or YAML: "
                                   f"{yaml_problem(e)}") from None
    except Exception as e:  # noqa: BLE001 - e.g. RecursionError, ValueError: refused all the same
        raise RemoteChangeRejected(f"payload cannot be read: {type(e).__name__}") from None
    if not isinstance(doc, dict) or not doc:
        raise RemoteChangeRejected("payload must be a non-empty mapping, e.g. "
                                   '{"qp": {"importance": {"person": 1.0}}}')
    for key in dotted_keys(doc):
        if any(k.startswith(f"{key}.") for k in LIVE_KEYS):  # {"qp": null}
            raise RemoteChangeRejected(f"{shown(key)} is a section: give a mapping of its keys "
                                       "to change, e.g. {\"qp\": {\"q_gain\": 4}}", key)
        if not is_live(key):
            raise RemoteChangeRejected(f"{shown(key)} cannot be changed remotely (live keys: "
                                       f"{', '.join(LIVE_KEYS)}...)", key)
    return doc


def is_live(key: str) -> bool:
    return key not in NOT_LIVE and any(key == k or key.startswith(k) for k in LIVE_KEYS)


def live_difference(old: Config, new: Config, strict: bool = False) -> dict[str, Any]:
    """The change document of the live keys whose values differ from `old` to `new` (a
    reloaded file). `strict`: ConfigError naming the first other key that differs, or a rate
    change the encoder cannot take live."""
    doc: dict[str, Any] = {}
    for key, value in _differences(old.to_dict(), new.to_dict()):
        if not is_live(key):
            if strict:
                raise ConfigError(f"{key} changed", key)
            continue
        *path, leaf = key.split(".")
        node = doc
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    if strict:
        check_live_rate(old.encoder, new.encoder)
        check_live_share(old.labeler, new.labeler)
    return doc


def changed_keys(old: Config, new: Config) -> set[str]:
    """The dotted keys whose values differ from `old` to `new` (qp.importance as one key)."""
    return {key for key, _ in _differences(old.to_dict(), new.to_dict())}


def _differences(old: dict, new: dict, prefix: str = ""):
    for k in {**old, **new}:
        path, a, b = f"{prefix}{k}", old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and path != "qp.importance":
            yield from _differences(a, b, path + ".")
        elif a != b:
            yield path, b


def apply_change(current: Config, doc: dict[str, Any]) -> Config:
    """A copy of `current` with `doc` merged and the whole configuration checked again."""
    candidate = copy.deepcopy(current)
    try:
        merge(candidate, doc, "")
        candidate.validate()
        check_live_rate(current.encoder, candidate.encoder)
        check_live_share(current.labeler, candidate.labeler)
    except ConfigError as e:
        raise RemoteChangeRejected(str(e), e.key) from None
    return candidate


def dotted_keys(doc: dict, prefix: str = "") -> list[str]:
    """The dotted keys a change sets (a table such as qp.importance counts as one key)."""
    keys = []
    for k, v in doc.items():
        if not isinstance(k, str) or not k:
            raise RemoteChangeRejected(f"key {shown(k)} under {prefix.rstrip('.') or 'the top'} "
                                       "is not a name")
        path = f"{prefix}{k}"
        # qp.importance is a table: its entries are values, not keys to check one by one
        if isinstance(v, dict) and v and path != "qp.importance":
            keys += dotted_keys(v, path + ".")
        else:
            keys.append(path)
    return keys


def each_key(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(dotted key, the change that sets it alone) for every key `dotted_keys` names."""
    changes = []
    for key in dotted_keys(doc):
        value: Any = doc
        for part in key.split("."):
            value = value[part]
        for part in reversed(key.split(".")):
            value = {part: value}
        changes.append((key, value))
    return changes


def one_line(reason: str) -> str:
    """A refusal's reason as an event and a log line carry it: one line, bounded."""
    text = " ".join(str(reason).split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


class OverrideStore:
    """The remote changes of each camera, kept in `<folder>/<camera>.yml`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, camera: str) -> Path:
        return self.folder / f"{camera}.yml"

    def load(self, camera: str) -> dict[str, Any]:
        path = self.path(camera)
        if not path.exists():
            return {}
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = yaml_problem(e) if isinstance(e, yaml.YAMLError) else e
            raise ConfigError(f"cannot read the remote changes in {path}: {reason}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path} does not hold a mapping of remote changes")
        return doc

    def add(self, camera: str, *docs: dict[str, Any]) -> None:
        """Merge `docs` (in order) into the camera's stored changes, atomically (a crash leaves
        the old file or the new one, never half of one)."""
        merged = self.load(camera)
        for doc in docs:
            merged = _deep_merge(merged, doc)
        # only the last level: an unmounted record.dir must not be re-created on the root disk
        self.folder.mkdir(exist_ok=True)
        path = self.path(camera)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.dump(merged, f, Dumper=ConfigDumper, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out
