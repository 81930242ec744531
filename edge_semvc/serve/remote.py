"""Remote configuration: a partial document arriving on `<prefix>/<camera>/config/set`, checked
and turned into the camera's next configuration, and the changes kept across restarts.

Only keys that are safe to change while frames flow are accepted (`LIVE_KEYS`): the QP policy,
the analysis scaling and the labeler's class priority and label age. Nothing remote can name a
file, a model, an encoder, a source or anything that executes; such keys are refused by name,
like unknown keys, wrong types, out-of-range values, malformed JSON/YAML and oversized payloads.
A refusal changes nothing. Accepted changes are merged into the camera's persisted overrides
(`<state_dir>/<camera>.yml`, written to a temporary file, fsynced and renamed), so a restart
applies them again after the configuration file.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..config_model import UniqueKeyLoader, merge
from ..encoders.config import check_live_rate
from ..errors import ConfigError

MAX_PAYLOAD_BYTES = 16 * 1024
# Dotted keys (or whole sections, ending in '.') a remote change may set.
LIVE_KEYS = ("qp.", "analysis.", "labeler.priority", "labeler.max_age_s",
             "fusion.description",  # "watch the vehicles at the gate", from a dashboard
             "encoder.bitrate", "encoder.crf")  # following the link: at the next frame
NOT_LIVE = {"qp.device"}  # a backend choice: set in the configuration file, with a restart


class RemoteChangeRejected(ConfigError):
    """A remote change that was refused; `key` names the offending key where there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def parse_change(payload: bytes) -> dict[str, Any]:
    """The nested mapping of a `config/set` payload (JSON or YAML), or RemoteChangeRejected."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise RemoteChangeRejected(f"payload of {len(payload)} bytes is over the "
                                   f"{MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RemoteChangeRejected(f"payload is not UTF-8 text (byte {e.start})") from None
    try:  # JSON is YAML; a key given twice is refused rather than silently taking the last
        doc = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise RemoteChangeRejected(f"payload is not valid JSON or YAML: "
                                   f"{str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not doc:
        raise RemoteChangeRejected("payload must be a non-empty mapping, e.g. "
                                   '{"qp": {"importance": {"person": 1.0}}}')
    for key in _dotted_keys(doc):
        if key in NOT_LIVE or not any(key == k or key.startswith(k) for k in LIVE_KEYS):
            raise RemoteChangeRejected(
                f"{key} cannot be changed remotely (live keys: {', '.join(LIVE_KEYS)}...)", key)
    return doc


def apply_change(current: Config, doc: dict[str, Any]) -> Config:
    """A copy of `current` with `doc` merged and the whole configuration checked again."""
    candidate = copy.deepcopy(current)
    try:
        merge(candidate, doc, "")
        candidate.validate()
        check_live_rate(current.encoder, candidate.encoder)
    except ConfigError as e:
        raise RemoteChangeRejected(str(e), _key_of(str(e))) from None
    return candidate


def _dotted_keys(doc: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in doc.items():
        if not isinstance(k, str):
            raise RemoteChangeRejected(f"key {k!r} under {prefix or 'the top'} is not a name")
        path = f"{prefix}{k}"
        # qp.importance is a table: its entries are values, not keys to check one by one
        if isinstance(v, dict) and v and path != "qp.importance":
            keys += _dotted_keys(v, path + ".")
        else:
            keys.append(path)
    return keys


def _key_of(message: str) -> str | None:
    for marker in ("invalid value for ", "unknown config key '"):
        if marker in message:
            return message.split(marker, 1)[1].split(":")[0].split("'")[0].strip()
    return None


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
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read the remote changes in {path}: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path} does not hold a mapping of remote changes")
        return doc

    def add(self, camera: str, doc: dict[str, Any]) -> None:
        """Merge `doc` into the camera's stored changes, atomically (a crash leaves the old
        file or the new one, never half of one)."""
        merged = _deep_merge(self.load(camera), doc)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(camera)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(merged, f, sort_keys=True)
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
