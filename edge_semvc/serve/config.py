"""The service's configuration: MQTT connection settings (`mqtt:`), the cameras (`cameras:`)
and `ServeConfig`, the pipeline's sections composed with those, `record:` and `http:` (the web
endpoint, serve/web.py).

Plain dataclasses with defaults and a `validate()`, the shape of the other subsystems' models,
so the service's configuration can compose `MqttConfig` and fill it with `config_model.merge`.
Secrets: `password` may be given inline, but `password_env` / `username_env` name environment
variables to read them from (a systemd `EnvironmentFile=` readable by root only). The password
never appears in `repr()` or `public_dict()`; `credentials()` is the one place that returns it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import Config
from ..config_model import check, merge, reference_rows, schema_of
from ..encoders.config import PROFILES
from ..errors import ConfigError, SourceError
from ..sinks.config import RecordConfig
from ..sources import SCHEMES, check_input
from ..uris import hide_passwords

REDACTED = "***"
# A camera name is a folder (record.dir/<name>), a file (<state_dir>/<name>.yml), an MQTT topic
# level and a log prefix: one safe path component, bounded.
CAMERA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_topic_level(name: str, key: str) -> None:
    """A camera name or prefix part must be one MQTT topic level: no wildcards, no '/'."""
    check(isinstance(name, str) and bool(name) and not any(c in name for c in "/+#\0"),
           key, name, "a non-empty name without '/', '+', '#'")


@dataclass
class MqttTlsConfig:
    enabled: bool = False  # connect with TLS
    ca_certs: str = ""  # "" = the system's CA certificates
    certfile: str = ""  # client certificate, for brokers that authenticate clients by it
    keyfile: str = ""  # the client certificate's key


@dataclass(repr=False)
class MqttConfig:
    enabled: bool = False  # publish telemetry and take remote configuration
    host: str = "localhost"  # the broker
    port: int = 1883  # 8883 is usual with TLS
    username: str = ""  # or username_env
    password: str = field(default="", repr=False)  # prefer password_env: never published
    username_env: str = ""  # name of an environment variable holding the user name
    password_env: str = ""  # name of an environment variable holding the password
    tls: MqttTlsConfig = field(default_factory=MqttTlsConfig)
    topic_prefix: str = "edge_semvc"  # may have several levels: "site1/edge_semvc"
    client_id: str = ""  # "" = edge-semvc-<hostname>-<pid> (clients sharing an id evict each other)
    stats_interval: float = 10.0  # seconds between <prefix>/<camera>/stats messages
    keepalive: int = 60  # seconds; the broker sends the last will after 1.5x this of silence
    reconnect_max_delay: int = 30  # seconds; reconnection backs off 1, 2, 4 ... up to this
    queue_size: int = 256  # messages held while the broker is unreachable (oldest stats go first)
    home_assistant: bool = False  # publish Home Assistant MQTT discovery configs
    discovery_prefix: str = "homeassistant"  # Home Assistant's discovery topic prefix

    def validate(self) -> "MqttConfig":
        check(isinstance(self.host, str) and bool(self.host.strip()), "mqtt.host", self.host,
               "a host name or address")
        check(isinstance(self.port, int) and 0 < self.port < 65536, "mqtt.port", self.port,
               "a TCP port, 1-65535")
        for part in self.topic_prefix.split("/"):
            check_topic_level(part, "mqtt.topic_prefix")
        for part in self.discovery_prefix.split("/"):
            check_topic_level(part, "mqtt.discovery_prefix")
        check(self.stats_interval > 0, "mqtt.stats_interval", self.stats_interval, "> 0 s")
        check(5 <= self.keepalive <= 3600, "mqtt.keepalive", self.keepalive, "5-3600 s")
        check(1 <= self.reconnect_max_delay <= 3600, "mqtt.reconnect_max_delay",
               self.reconnect_max_delay, "1-3600 s")
        check(self.queue_size >= 1, "mqtt.queue_size", self.queue_size, ">= 1")
        for key in ("username_env", "password_env"):
            name = getattr(self, key)
            check(not name or name.replace("_", "a").isalnum(), f"mqtt.{key}", name,
                   "an environment variable name")
        check(not (self.password and self.password_env), "mqtt.password", REDACTED,
               "either password or password_env, not both")
        tls = self.tls
        for key in ("ca_certs", "certfile", "keyfile"):
            path = getattr(tls, key)
            check(not path or tls.enabled, f"mqtt.tls.{key}", path,
                   "mqtt.tls.enabled: true when TLS files are given")
        check(not tls.keyfile or tls.certfile, "mqtt.tls.keyfile", tls.keyfile,
               "mqtt.tls.certfile as well")
        return self

    def credentials(self, environ: Mapping[str, str] | None = None
                    ) -> tuple[str | None, str | None]:
        """(username, password), each read from its environment variable when one is named;
        None where not set. A named variable that is missing is an error, not anonymous login."""
        env = os.environ if environ is None else environ
        values = []
        for key, inline in (("username", self.username), ("password", self.password)):
            var = getattr(self, f"{key}_env")
            if var:
                if var not in env:
                    raise ConfigError(f"mqtt.{key}_env names the environment variable {var}, "
                                      "which is not set")
                values.append(env[var])
            else:
                values.append(inline or None)
        return values[0], values[1]

    def effective_client_id(self) -> str:
        import socket

        return self.client_id or f"edge-semvc-{socket.gethostname()}-{os.getpid()}"

    def public_dict(self) -> dict[str, Any]:
        """The settings as a dict safe to log or publish: the password replaced by '***'."""
        data = dataclasses.asdict(self)
        if data["password"]:
            data["password"] = REDACTED
        return data

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.public_dict().items())
        return f"MqttConfig({items})"


@dataclass
class HttpConfig:
    enabled: bool = False  # serve /api/stats, /metrics, /api/config and the cameras' pages
    # the address to listen on: 0.0.0.0 opens it to the network; IPv6 too (`::1`, `::`: every
    # interface, IPv4 as well)
    host: str = "127.0.0.1"
    port: int = 8480  # TCP port; 0 = any free one (tests)
    username_env: str = ""  # with password_env: HTTP basic auth, user from this variable
    password_env: str = ""  # the password's environment variable (never in the file)
    stats_interval: float = 2.0  # seconds between the figures the page and /api/stats show
    live: bool = True  # the pages' live picture (the encoder's packets as fragmented MP4)
    # without credentials, the host names a browser may reach it by besides an address,
    # localhost and this machine's name (a proxy's, `cam.lan`): others are refused, so that a
    # web site cannot point its own name at 127.0.0.1 and read the page (DNS rebinding)
    allowed_hosts: list[str] = field(default_factory=list)

    def validate(self) -> "HttpConfig":
        check(isinstance(self.host, str) and bool(self.host.strip()), "http.host", self.host,
              "an address to listen on, e.g. 127.0.0.1")
        check(isinstance(self.port, int) and 0 <= self.port < 65536, "http.port", self.port,
              "a TCP port, 0-65535 (0: any free one)")
        check(self.stats_interval > 0, "http.stats_interval", self.stats_interval, "> 0 s")
        for key in ("username_env", "password_env"):
            name = getattr(self, key)
            check(not name or name.replace("_", "a").isalnum(), f"http.{key}", name,
                  "an environment variable name")
        check(bool(self.username_env) == bool(self.password_env), "http.password_env",
              self.password_env, "set together with http.username_env (or neither)")
        check(isinstance(self.allowed_hosts, list) and all(
            isinstance(h, str) and h and not set(h) & set("/:@ ") for h in self.allowed_hosts),
            "http.allowed_hosts", self.allowed_hosts, "a list of host names (no port)")
        return self

    def credentials(self, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
        """(user, password) from the named environment variables; None without them. A named
        variable that is missing or empty is an error, never an open page."""
        if not self.username_env:
            return None
        env = os.environ if environ is None else environ
        values = []
        for key in ("username_env", "password_env"):
            var = getattr(self, key)
            if not env.get(var):
                raise ConfigError(f"http.{key} names the environment variable {var}, which is "
                                  "not set")
            values.append(env[var])
        if ":" in values[0]:  # basic auth's user ends at the first ':': nobody could log in
            raise ConfigError(f"http.username_env: the user name in {self.username_env} has a "
                              "':', which HTTP basic auth cannot carry in a user name")
        return values[0], values[1]


@dataclass
class CameraConfig:
    # URI: file://PATH, rtsp://..., v4l2:///dev/videoN, csi://N, demo://NAME, or a stream sent
    # to this machine: udp://@:PORT (MPEG-TS), rtp://@:PORT?codec=h264 (RTP, no SDP), FILE.sdp,
    # srt://@:PORT (MPEG-TS over SRT from a sender that calls) or srt://HOST:PORT (one that listens)
    input: str = ""
    loop: bool = False  # file inputs: start again at the end (a camera never ends)
    realtime: bool = True  # file inputs are played at their own frame rate, like a camera
    queue_frames: int = 1  # frames queued between the pipeline's threads (latency)
    profile: str = ""  # "" = encoder.profile; live or storage for this camera alone
    record: bool = True  # record into record.dir (false: stream only, e.g. a drone's downlink)
    # stream outputs fed by the same encoder: rtp://HOST:PORT, udp://HOST:PORT, srt://...,
    # rtsp://@:PORT/PATH (README, Outputs)
    outputs: list[str] = field(default_factory=list)

    def validate(self, key: str) -> None:
        scheme, sep, _ = self.input.partition("://")
        check(bool(self.input.strip()) and self.input.isprintable() and (
            not sep or scheme in SCHEMES) and self.input != "-", f"{key}.input",
            hide_passwords(self.input),  # before a long URI is cut short, '@' and all
            "a URI: file://PATH, rtsp://HOST/PATH, v4l2:///dev/videoN, csi://N, demo://NAME, "
            "udp://@:PORT, rtp://@:PORT, FILE.sdp, srt://@:PORT (a service has no standard "
            "input)")
        try:
            check_input(self.input)
        except SourceError as e:  # a udp://, rtp:// or srt:// port, address, option or codec
            raise ConfigError(f"invalid value for {key}.input: {e}", f"{key}.input") from None
        check(1 <= self.queue_frames <= 16, f"{key}.queue_frames", self.queue_frames, "1-16")
        check(self.profile in ("", *PROFILES), f"{key}.profile", self.profile,
              f"'' (encoder.profile) or {' or '.join(PROFILES)}")
        check(self.record or bool(self.outputs), f"{key}.record", self.record,
              "true, or stream outputs in outputs: (a camera must go somewhere)")
        for i, uri in enumerate(self.outputs):
            check("://" in uri and not uri.startswith("file://"), f"{key}.outputs[{i}]",
                  hide_passwords(uri),
                  "a stream URI: rtp://, udp://, srt:// or rtsp://@:PORT/PATH (recordings "
                  "go to record.dir)")


@dataclass
class ServeConfig(Config):
    """`edge-semvc serve`'s file: the pipeline's sections, shared by every camera, plus
    `cameras`, `record`, `mqtt` and `state_dir` (where remote changes are kept)."""

    # name -> a URI or {input: URI, loop, realtime, ...} (cameras.<name>.* below)
    cameras: dict[str, Any] = field(default_factory=dict)
    record: RecordConfig = field(default_factory=RecordConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    state_dir: str = ""  # "" = <record.dir>/.state

    def validate(self) -> "ServeConfig":
        super().validate()
        check(bool(self.cameras), "cameras", self.cameras,
               "at least one camera: {name: {input: URI}}")
        parsed = {}
        for name, entry in self.cameras.items():
            check(CAMERA_NAME.fullmatch(name) is not None, "cameras", name,
                  "a camera name: 1-64 letters, digits, '_', '-' or '.', not starting with '.' "
                  "or '-' (it names a folder and an MQTT topic level)")
            if isinstance(entry, CameraConfig):  # validated before
                parsed[name] = entry
                continue
            check(isinstance(entry, (dict, str)), f"cameras.{name}", entry,
                  "{input: URI, ...} or a URI")
            cam = CameraConfig()
            merge(cam, entry if isinstance(entry, dict) else {"input": entry}, f"cameras.{name}.")
            cam.validate(f"cameras.{name}")
            parsed[name] = cam
            if cam.profile:  # the shared encoder section must suit this camera's profile
                encoder = dataclasses.replace(self.encoder, profile=cam.profile)
                try:
                    encoder.validate()
                except ConfigError as e:
                    raise ConfigError(f"cameras.{name}.profile {cam.profile}: {e}") from None
        self.cameras = parsed
        listening: dict[int, str] = {}
        for name, cam in parsed.items():  # a second camera on a port would never get it
            for port in check_input(cam.input):  # checked above: its UDP ports
                check(port not in listening, f"cameras.{name}.input", cam.input,
                      f"a port of its own: cameras.{listening.get(port)}.input listens on "
                      f"udp port {port}")
                listening[port] = name
        if any(cam.record for cam in parsed.values()) or self.record.dir:
            self.record.validate()
        check(bool(self.record.dir or self.state_dir), "state_dir", self.state_dir,
              "a folder for the remote changes when no camera records (record.dir unset)")
        self.mqtt.validate()
        self.http.validate()
        return self

    def pipeline_config(self, camera: str | None = None) -> Config:
        """The pipeline's sections, as a plain Config of their own (each camera's copy, with
        its own `profile` when it has one)."""
        cfg = copy.deepcopy(Config(**{f.name: getattr(self, f.name)
                                      for f in dataclasses.fields(Config)}))
        cam = self.cameras.get(camera) if camera is not None else None
        if cam is not None and cam.profile:
            cfg.encoder.profile = cam.profile
        return cfg

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration, safe to show: the MQTT password replaced by '***' (the
        HTTP credentials and stream outputs' are only named by their variables)."""
        data = self.to_dict()
        data["mqtt"] = self.mqtt.public_dict()
        return data

    def state_folder(self) -> str:
        return self.state_dir or os.path.join(self.record.dir, ".state")


def json_schema() -> dict[str, Any]:
    """`serve`'s file as a JSON schema: the pipeline's sections and the service's, each camera
    a URI or a mapping of `CameraConfig`'s keys."""
    from ..config import json_schema as schema

    out = schema(ServeConfig)
    cameras = out["properties"]["cameras"]
    camera = schema_of(CameraConfig)  # what validate() asks of it, an editor too
    camera["required"] = ["input"]
    camera["properties"]["input"]["minLength"] = 1
    camera["properties"]["queue_frames"].update(minimum=1, maximum=16)
    camera["properties"]["profile"]["enum"] = ["", *PROFILES]
    cameras["additionalProperties"] = {"anyOf": [{"type": "string", "minLength": 1}, camera]}
    cameras["propertyNames"] = {"pattern": f"^{CAMERA_NAME.pattern}$"}
    cameras["minProperties"] = 1
    return out


def reference() -> str:
    """docs/configuration.md: every key with its default and what it does, generated from the
    dataclasses that define them (`edge-semvc config --reference`; a test keeps it current)."""
    from .remote import LIVE_KEYS, NOT_LIVE

    rows = reference_rows(ServeConfig)
    cameras = [(f"cameras.<name>.{k[len('x.'):]}", d, c)
               for k, d, c in reference_rows(CameraConfig, "x.")]
    i = next(n for n, r in enumerate(rows) if r[0] == "cameras")
    rows[i + 1:i + 1] = cameras
    lines = ["# Configuration reference", "",
             "Generated by `edge-semvc config --reference` from the code that defines the "
             "defaults. `encode`, `bench` and `field-bench` read every section but `cameras`, "
             "`record`, `mqtt`, `http` and `state_dir`, which are `serve`'s own (and which "
             "they refuse as unknown keys: give them a file without those); `serve` reads "
             "them all. Keys that "
             "`serve` takes over MQTT while running (`<prefix>/<camera>/config/set`): "
             + ", ".join(f"`{k}*`" if k.endswith(".") else f"`{k}`" for k in LIVE_KEYS)
             + " (not " + ", ".join(f"`{k}`" for k in sorted(NOT_LIVE)) + ").", "",
             "Checked at load, before anything opens (a refusal is an error naming the key, "
             "the value and what is allowed): unknown keys, types (a string is not a number), "
             "ranges, names picked from a registry (`encoder.backend`, `labeler.runtime`, "
             "`qp.device`, model decoders, input schemes), each `labeler.models` entry "
             "(resolved once into a typed spec), class names against the models, and "
             "`encoder.params` against the named backend's own check (nvenc and jetson-v4l2: "
             "their keys and values; x264 and x265 take the library's options, which the "
             "library checks when it opens). Whether hardware runs here (CUDA for `qp.device: "
             "cuda`, TensorRT, NVENC, the Jetson encoder) is not validation's question: the "
             "pre-flight (`preflight.py`) that `encode`, `bench`, `field-bench` and `serve` "
             "run answers it, picks what `auto` means and refuses `qp.device: cuda` where CUDA "
             "is not usable.", "",
             "| key | default | meaning |", "|---|---|---|"]
    for key, default, comment in rows:
        lines.append(f"| `{key}` | `{default}` | {comment.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
