"""Hostile remote configuration: `edge-semvc serve` against a real mosquitto broker, sent
~200 `config/set` payloads of every kind a fault-injection run tried (alias bombs, deep
nesting, huge numbers, wrong types, YAML 1.1 quirks, odd keys, oversized payloads, extreme
values for every live key) and a few good ones. Each must end in exactly one event —
`config_applied` (the good ones, harmless) or `config_rejected` naming why — and one log line;
the recording must never be interrupted and memory must stay flat.

Plus, in process: every live key has a finite range (a test that fails for a live key added
without one) and the README documents each.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_serve import (
    _nested,
    check_segments,
    malformed_payloads,
    service_log,
    start_service,
    stop,
    with_broker,
)
from test_telemetry import MOSQUITTO, Watcher, wait_until

from edge_semvc.config import Config, load_config
from edge_semvc.config_model import reference_rows
from edge_semvc.errors import ConfigError
from edge_semvc.serve.changes import RemoteChanges
from edge_semvc.serve.remote import (
    LIVE_KEYS,
    MAX_PAYLOAD_BYTES,
    NOT_LIVE,
    OverrideStore,
    RemoteChangeRejected,
    apply_change,
    parse_change,
)

ROOT = Path(__file__).resolve().parents[1]
APPLIED = object()  # the expectation of a payload that is applied
SOME_KEY = object()  # a refusal naming no particular key (a payload that cannot be read)


def live_leaves() -> list[tuple[str, object]]:
    """(dotted key, default) of every key a remote change may set."""
    return [(key, json.loads(default)) for key, default, _ in reference_rows(Config)
            if key not in NOT_LIVE and any(key == k or key.startswith(k) for k in LIVE_KEYS)]


def j(doc) -> bytes:
    return json.dumps(doc).encode()


def alias_bomb(levels: int = 22) -> bytes:
    lines = ["a0: &a0 {x: 1, y: 1}"]
    lines += [f"a{i}: &a{i} {{x: *a{i - 1}, y: *a{i - 1}}}" for i in range(1, levels)]
    return ("\n".join(lines) + f"\nqp: {{q_gain: *a{levels - 1}}}\n").encode()


def hostile_payloads() -> list[tuple[bytes, object]]:
    """(payload, expectation): APPLIED, or the key its refusal must name (SOME_KEY: any or
    none; the key of a value refused by type or range)."""
    out: list[tuple[bytes, object]] = []
    numeric = [(k, d) for k, d in live_leaves() if isinstance(d, (int, float))]
    numeric += [(f"qp.importance.{c}", 0.5) for c in ("person", "face", "background")]
    for key, _ in numeric:  # extremes: every live number has a finite range
        out += [(j(_nested(key, 1e308)), key), (j(_nested(key, -1e308)), key)]
    for key in ("analysis.complexity_full_var", "analysis.change_full_mad", "labeler.max_age_s"):
        out.append((j(_nested(key, 1e-300)), key))  # a scale of ~0: an infinite C, V or age
    out += [  # a string is not a number, YAML 1.1 is not JSON
        (j({"qp": {"q_gain": "5"}}), "qp.q_gain"),
        (j({"qp": {"importance": {"person": "0.5"}}}), "qp.importance.person"),
        (b"labeler: {max_age_s: 1:30}", "labeler.max_age_s"),  # YAML 1.1: 90
        (b"qp: {q_gain: 010}", "qp.q_gain"),  # YAML 1.1: 8
        (b"qp: {q_gain: yes}", "qp.q_gain"), (b"qp: {q_gain: .nan}", "qp.q_gain"),
        (b"qp: {q_gain: -.inf}", "qp.q_gain"), (b"qp: {q_gain: 2026-01-01}", "qp.q_gain"),
        (j({"qp": {"v_threshold": True}}), "qp.v_threshold"),
        (j({"analysis": {"change_full_mad": [24]}}), "analysis.change_full_mad"),
    ]
    for value in (123, None, ["a"], {"a": 1}, True, "x" * 501):  # a description is text
        out.append((j({"fusion": {"description": value}}), "fusion.description"))
    out += [(j({"labeler": {"priority": ["face"] * 1500}}), "labeler.priority"),
            (j({"labeler": {"priority": "face"}}), "labeler.priority")]
    out += [(b'{"qp": {"q_gain": 1' + b"0" * 400 + b"}}", SOME_KEY),  # numbers too long
            (b'{"qp": {"q_gain": ' + b"9" * 5001 + b"}}", SOME_KEY),
            (b'{"qp": {"q_gain": 0.' + b"0" * 300 + b"1}}", SOME_KEY),
            (b'{"qp": {"q_gain": 1e400}}', "qp.q_gain"), (b'{"qp": {"q_gain": -1e400}}',
                                                          "qp.q_gain")]
    out += [(alias_bomb(), SOME_KEY), (alias_bomb(3), SOME_KEY),  # anchors and aliases
            (b"qp: &a {q_gain: 5}", SOME_KEY), (b"x: &v 5\nqp: {q_gain: *v}", SOME_KEY),
            (b"qp: {<<: *base}", SOME_KEY)]
    out += [(b"[" * 10_000 + b"]" * 10_000, SOME_KEY),  # nesting
            (b'{"qp": ' * 3000 + b"1" + b"}" * 3000, SOME_KEY),
            (j(_nested(".".join(["qp"] + ["a"] * 20), 1)), SOME_KEY),
            ("\n".join("  " * i + f"k{i}:" for i in range(12)).encode() + b" 1", SOME_KEY)]
    out += [(b"? [a, b]\n: 1\n", SOME_KEY), (b"{[1, 2]: 3}", SOME_KEY),  # keys that are no name
            (b"qp: {{a: 1}: 2}", SOME_KEY), (b"~: 1", SOME_KEY), (b"true: 1", SOME_KEY),
            (b"qp: {importance: {1: 0.5}}", "qp.importance"), (b'{"": 1}', SOME_KEY),
            (j({"qp\nq_gain": 1}), SOME_KEY), (j({"x" * 10_000: 1}), SOME_KEY)]
    pad = j({"qp": {"q_gain": 6}})
    out += [(b"{" + b" " * (MAX_PAYLOAD_BYTES + 1 - len(pad)) + pad[1:], SOME_KEY),  # sizes
            (b" " * (64 * 1024 + 1), SOME_KEY), (b"#" * 2**20, SOME_KEY)]
    out += [(b'!!python/object/apply:os.system ["true"]', SOME_KEY),  # tags, encodings
            (b"qp: !!binary aGVsbG8=", SOME_KEY), (b"qp: !!set {q_gain}", SOME_KEY),
            (b"!!omap [qp: 1]", SOME_KEY), (b"\xef\xbb\xbf\xff\xfe", SOME_KEY),
            (b'qp: {q_gain: !!float "5"}', SOME_KEY), (b'qp: {refresh_period: !!int "010"}',
                                                       SOME_KEY),  # a conversion, not a type
            ("qp: {q_gain: 5}".encode("utf-16"), SOME_KEY), (b'{"qp": {"q_gain\x00": 1}}',
                                                             SOME_KEY)]
    good = [{"qp": {"q_gain": 6}}, {"qp": {"importance": {"person": 0.9}}},
            {"qp": {"offset_min": -10, "target_mean": 1.0}}, {"qp": {"v_threshold": 0.3}},
            {"qp": {"alpha_slow": 0.5, "beta_fast": 0.9}},
            {"analysis": {"change_full_mad": 30, "complexity_full_var": 900}},
            {"labeler": {"priority": ["face", "person", "text", "vehicle"]}},
            {"labeler": {"max_age_s": 1.5}}, {"qp": {"q_gain": 1e-300}},  # tiny is harmless
            {"fusion": {"description": "watch the vehicles\nat the gate"}}]
    out += [(j(doc), APPLIED) for doc in good]
    out.append((b"{" + b" " * (MAX_PAYLOAD_BYTES - len(pad)) + pad[1:], APPLIED))  # 16 KiB
    out.append((b"qp:\n  q_gain: 4\n", APPLIED))  # YAML
    return out


def test_the_payloads_say_what_the_checks_do():
    """In process first: each hostile payload is refused naming its key, each good one taken
    (and a few kinds the service sees only over MQTT: sizes)."""
    base = Config().validate()
    for payload, expect in hostile_payloads():
        if expect is APPLIED:
            apply_change(base, parse_change(payload))
            continue
        with pytest.raises(RemoteChangeRejected) as refused:
            apply_change(base, parse_change(payload))
        if expect is not SOME_KEY:
            assert refused.value.key == expect, (payload[:80], str(refused.value))
    with pytest.raises(RemoteChangeRejected, match="'qp' is a section: give a mapping"):
        parse_change(b'{"qp": null}')  # not "cannot be changed remotely": its keys can
        assert "\n" not in str(refused.value)[:2000]


@pytest.mark.parametrize("key, default", live_leaves())
def test_every_live_key_has_a_finite_range(key, default):
    """Every key a remote change may set refuses extreme values: numbers far out either way,
    tables with extreme entries, a list or a text far too long. A live key added without a
    range in its subsystem's validate() fails here."""
    base = Config().validate()
    if isinstance(default, dict):
        entry = next(iter(default))
        values = [{entry: 1e308}, {entry: -1e308}]
    elif isinstance(default, list):
        values = [default * 1000]
    elif isinstance(default, str):
        values = ["x" * 100_000]
    else:
        values = [1e308, -1e308]
    for value in values:
        with pytest.raises(RemoteChangeRejected):
            apply_change(base, _nested(key, value))


def test_the_readme_documents_every_live_key_and_its_range():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Service"):readme.index("## Status")]
    for key, _ in live_leaves():
        assert f"`{key}`" in section, f"README's service section does not document {key}"


class Recorder(list):
    def __call__(self, camera, event, fields):
        self.append((camera, event, fields))


def test_what_paho_hands_over_is_refused_at_once_or_queued(tmp_path):
    """On paho's thread only cheap checks: a retained command (replayed at every reconnect),
    an oversized payload, a flood beyond the queue and an unknown camera are refused there,
    each with one event (the unknown camera, which has no topic, with a log line)."""
    events = Recorder()
    changes = RemoteChanges({"front": object()}, OverrideStore(tmp_path), events,
                            lambda *_: None, max_pending=3)
    changes.submit("front", b'{"qp": {"q_gain": 5}}', retained=True)
    changes.submit("front", b" " * (MAX_PAYLOAD_BYTES + 1))
    for _ in range(5):  # the worker is not started: three wait, two are refused
        changes.submit("front", b'{"qp": {"q_gain": 5}}')
    changes.submit("back", b'{"qp": {"q_gain": 5}}')
    reasons = [f["reason"] for _, e, f in events if e == "config_rejected"]
    assert len(events) == 4 and len(reasons) == 4
    assert "retained" in reasons[0] and "16384-byte limit" in reasons[1]
    assert reasons[2] == reasons[3] == "3 changes are already waiting; send it again later"


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_hostile_remote_configuration_over_mqtt(tmp_path):
    payloads = hostile_payloads() + [(p, SOME_KEY) for p in malformed_payloads()]
    assert len(payloads) >= 150
    broker, config = with_broker(tmp_path)
    proc = start_service(config)
    watcher = Watcher(broker.port, "edge_semvc/#")

    def events(*names):
        with watcher.lock:
            found = [json.loads(m[1]) for m in watcher.messages
                     if m[0] == "edge_semvc/front/events"]
        return [e for e in found if e["event"] in names]

    decisions = lambda: events("config_applied", "config_rejected")  # noqa: E731
    try:
        wait_until(lambda: watcher.on("edge_semvc/front/stats"), timeout=120,
                   what="the service to run")
        for n, (payload, expect) in enumerate(payloads):  # one at a time: one answer each
            watcher.client.publish("edge_semvc/front/config/set", payload, qos=1)
            wait_until(lambda n=n: len(decisions()) >= n + 1, timeout=60,
                       what=f"the answer to payload {n} ({payload[:60]!r})")
            last = decisions()[-1]
            assert len(decisions()) == n + 1, decisions()[n:]
            if expect is APPLIED:
                assert last["event"] == "config_applied", (payload[:80], last)
            else:
                assert last["event"] == "config_rejected" and last["reason"], (payload[:80],
                                                                               last)
                if expect is not SOME_KEY:
                    assert last["key"] == expect, (payload[:80], last)
        sent = len(payloads)
        burst = [p for p, e in payloads if e is not APPLIED][:60]
        for payload in burst:  # all at once: each still gets its one answer
            watcher.client.publish("edge_semvc/front/config/set", payload, qos=1)
        wait_until(lambda: len(decisions()) >= sent + len(burst), timeout=120,
                   what="an answer to each of the burst")
        frames = [s["frames"] for s in watcher.json_on("edge_semvc/front/stats")]
        wait_until(lambda: watcher.json_on("edge_semvc/front/stats")[-1]["frames"] > frames[-1],
                   timeout=60, what="frames still flowing")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kb = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("VmHWM:")))
    finally:
        code = stop(proc)
        watcher.close()
        broker.stop()
    log = service_log(config)
    assert code == 0, log
    answers = decisions()
    assert len(answers) == sent + len(burst)
    assert [a["event"] for a in answers[sent:]] == ["config_rejected"] * len(burst)
    assert log.count("front: config_rejected") == len(events("config_rejected"))  # one line
    assert "Traceback" not in log
    # recording never interrupted: no failure of any kind, segments continuous and whole
    assert not events("source_lost", "error", "sink_error", "write_error"), log[-3000:]
    check_segments(tmp_path / "rec" / "front")
    assert peak_kb < 1_000_000, f"peak memory {peak_kb} kB"  # an expanded alias bomb: GBs
    state = [json.loads(m[1]) for m in watcher.messages
             if m[0] == "edge_semvc/front/config/state"][-1]
    assert state["qp"]["q_gain"] == 4.0 and state["fusion"]["description"] == \
        "watch the vehicles\nat the gate"


def test_stored_changes_read_back_as_they_were_given(tmp_path):
    """A description that reads as a number under the loader's rules (`1e5`) stays text."""
    store = OverrideStore(tmp_path)
    change = {"fusion": {"description": "1e5"}, "qp": {"q_gain": 1e-300}}
    store.add("front", change, {"labeler": {"max_age_s": 3}})
    assert store.load("front") == {**change, "labeler": {"max_age_s": 3}}
    apply_change(Config().validate(), store.load("front"))


@pytest.mark.parametrize("sets,key", [
    (["encoder.backend=nvenc", "encoder.params.bogus=1"], "encoder.params.bogus"),
    (["encoder.backend=nvenc", "encoder.params.gpu=x"], "encoder.params.gpu"),
    (["encoder.backend=jetson-v4l2", "encoder.params.codec=vp9"], "encoder.params.codec"),
    (["encoder.backend=jetson-v4l2", "encoder.params.min_qp=30", "encoder.params.max_qp=30"],
     "encoder.params.min_qp"),
])
def test_a_backends_params_are_refused_at_load_naming_the_key(sets, key):
    """Not when the encoder opens (an EncoderError mid-run): at load, as any other key."""
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    assert e.value.key == key and key in str(e.value)
    load_config(None, ["encoder.backend=x264", "encoder.params.aq-mode=2"])  # x264's own options
