"""The whole configuration: each subsystem's model composed, loaded from YAML and dotted
overrides, checked across subsystems.

Every key has a default in its subsystem's model (`labeler/config.py`, `analysis/config.py`,
`qp/config.py`, `encoders/config.py`); a YAML file or `--set key=value` overrides it. Unknown
keys and bad values raise ConfigError naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .analysis.config import AnalysisConfig, AttentionConfig, FusionConfig, SceneConfig
from .config_model import ConfigDumper, ConfigLoader, check, merge, schema_of, yaml_problem
from .encoders.config import EncoderConfig
from .errors import ConfigError
from .labeler.config import EmotionConfig, LabelerConfig
from .labeler.registry import cache_root, product_classes
from .qp.config import QpConfig
from .sinks.config import StreamsConfig

__all__ = ["AnalysisConfig", "Config", "ConfigError", "EncoderConfig", "LabelerConfig",
           "QpConfig", "json_schema", "load_config"]


@dataclass
class Config:
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    qp: QpConfig = field(default_factory=QpConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # The method's extensions (embodiments 2-5; extensions.py), each off by default.
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # what the outputs keep of the input's audio, subtitle and data streams
    streams: StreamsConfig = field(default_factory=StreamsConfig)

    def validate(self) -> "Config":
        self.labeler.validate()
        self._check_classes(("labeler.priority", self.labeler.priority), ("qp.importance", [
            c for c in self.qp.importance if c != "background"]))
        self.analysis.validate()
        self.qp.validate()
        self.encoder.validate()
        self.attention.validate()
        self.emotion.validate()
        self.scene.validate()
        self.fusion.validate()
        self._check_classes(("fusion.voice_classes", self.fusion.voice_classes),
                            ("fusion.words", list(self.fusion.words.values())))
        self.streams.validate()
        on = [n for n in ("attention", "emotion", "scene", "fusion") if getattr(self, n).enabled]
        check(self.qp.device != "cuda" or not on, "qp.device", self.qp.device,
              f"cpu while {', '.join(on)} is enabled (the extensions read the CPU analysis)")
        return self

    def _check_classes(self, *named: tuple[str, list[str]]) -> None:
        """Class names must be ones a model can label (a typo would silently weigh nothing)."""
        known = product_classes(self.labeler.models)
        for key, names in named:
            unknown = [c for c in names if c not in known]
            check(not unknown, key, unknown,
                  f"product classes a model can label: {', '.join(sorted(known))}")

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=ConfigDumper, sort_keys=False)

    def cache_dir(self) -> Path:
        return cache_root(self.labeler.cache_dir)


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                cls: type[Config] = Config) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides (dotted keys), then validation.
    `cls`: a Config with more sections (the service's)."""
    cfg = cls()
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: "
                              f"{e.reason})") from None
        try:
            data = yaml.load(text, Loader=ConfigLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(e)}") \
                from None
        merge(cfg, {} if data is None else data, "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = raw  # read for the key's type: text for a string, else YAML
        merge(cfg, nested, "", text=True)
    return cfg.validate()


def json_schema(cls: type = Config) -> dict[str, Any]:
    """A JSON schema of the configuration (or of another file built on it: `serve`'s), for
    editors (`edge-semvc config --schema`)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "edge_semvc",
            **schema_of(cls)}
