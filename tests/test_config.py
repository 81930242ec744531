import json
import re

import pytest

from edge_semvc.config import Config, ConfigError, json_schema, load_config


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = Config().validate()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path).to_dict() == cfg.to_dict()


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("encoder:\n  preset: fast\nqp:\n  importance:\n    person: 0.5\n")
    cfg = load_config(path, ["encoder.preset=medium", "labeler.models=a,b",
                             "encoder.params.aq-mode=2"])
    assert cfg.encoder.preset == "medium"
    assert cfg.qp.importance["person"] == 0.5
    assert cfg.qp.importance["face"] == 1.0  # tables merge, not replace
    assert cfg.labeler.models == ["a", "b"]
    assert cfg.encoder.params == {"aq-mode": "2"}


@pytest.mark.parametrize("override, message", [
    ("qp.nope=1", "unknown config key 'qp.nope'"),
    ("nope.x=1", "unknown config key 'nope'"),
    ("encoder.rc=cqp", "encoder.rc: 'cqp'"),
    ("labeler.interval=x", "labeler.interval: 'x'"),
    ("labeler.interval=0", "labeler.interval: 0"),
    ("labeler.threshold=1.5", "labeler.threshold: 1.5"),
    ("qp.importance.person=3", "qp.importance.person: 3"),
    ("qp.target_mean=13", "qp.target_mean: 13"),
    ("encoder.rc=cbr", "encoder.bitrate: 0"),
    ("encoder.crf=60", "encoder.crf: 60"),
    ("encoder.aq_with_map=1.5", "encoder.aq_with_map: 1.5"),
    ("encoder.aq_with_map=nan", "encoder.aq_with_map: 'nan'"),
    ("qp.importance_reference=0", "qp.importance_reference: 0"),
    ("qp.importance_exponent=-1", "qp.importance_exponent: -1"),
    ("qp.importance_boost_exponent=2.5", "qp.importance_boost_exponent: 2.5"),
    ("qp.importance_boost_max=0.5", "qp.importance_boost_max: 0.5"),
    ("missing-equals", "--set expects key=value"),
    ("qp.importance.face=abc", "qp.importance.face: 'abc' (expected a number)"),
    ("labeler.priority=face,dog", "labeler.priority: ['dog']"),
    ("qp.importance.dog=0.5", "qp.importance: ['dog']"),
    ("encoder.bitrate=2M", "only --bitrate takes k and M: 2M is 2000000 here"),
    ("encoder.bitrate=999", "encoder.bitrate: 999 (expected 1000-1000000000 bits/s"),
    ("labeler.models=[nanodet_g, nanodet_g]", "labeler.models[0] is 'nanodet_g'"),
    ("fusion.words.zebra=notaclass", "fusion.words: ['notaclass']"),
    ("fusion.voice_classes=[unicorn]", "fusion.voice_classes: ['unicorn']"),
    ("fusion.description=" + "x" * 501, "(501 characters)"),
    ("analysis.intra_floor=0", "expected above 0, at most 255"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_a_key_given_twice_is_refused(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("qp:\n  q_gain: 2\nencoder:\n  crf: 20\nqp:\n  q_gain: 3\n")
    with pytest.raises(ConfigError, match="key 'qp' is given twice"):
        load_config(dup)


def test_a_class_mapped_by_a_model_entry_may_be_weighted():
    cfg = load_config(None, ["qp.importance.car=0.9"]
                      + ['labeler.models=[{name: yolox_nano, map: {car: car}}]'])
    assert cfg.qp.importance["car"] == 0.9


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("qp: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("cameras:\n  front: {input: x, loop: true\n")  # where and what, one line
    with pytest.raises(ConfigError, match=r"not valid YAML: expected ',' or '}', but got "
                       r"'<stream end>' at line 3, column 1 \(while parsing a flow mapping "
                       r"from line 2, column 10\)$"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_schema_lists_every_section():
    schema = json_schema()
    assert set(schema["properties"]) == {"labeler", "analysis", "qp", "encoder", "attention",
                                         "emotion", "scene", "fusion", "streams"}
    assert schema["properties"]["qp"]["properties"]["target_mean"]["default"] == 1.5
    json.dumps(schema)


def test_the_serve_schema_describes_every_key_and_each_camera():
    """An editor shows each key's meaning (the reference's words) and checks a camera entry:
    a URI, or a mapping of the camera's own keys, under a name a camera may have."""
    from edge_semvc.serve.config import json_schema as serve_schema
    from edge_semvc.serve.config import reference

    schema = serve_schema()
    described = {}

    def walk(node, prefix):
        for key, sub in node["properties"].items():
            if "properties" in sub:
                walk(sub, f"{prefix}{key}.")
            elif sub.get("description"):
                described[prefix + key] = sub["description"]

    walk(schema, "")
    rows = [line.split(" | ") for line in reference().splitlines() if line.startswith("| `")]
    keys = {row[0].strip("| `"): row[2].rstrip(" |") for row in rows}
    assert described["encoder.bitrate"] and described["mqtt.password_env"]
    missing = [k for k in keys if "<name>" not in k and keys[k] and k not in described]
    assert not missing
    cameras = schema["properties"]["cameras"]
    entry = cameras["additionalProperties"]["anyOf"]
    assert entry[0] == {"type": "string", "minLength": 1}
    # what serve refuses, the schema does: a camera without its input (before: any mapping of
    # the camera's keys passed), a profile or queue length out of range
    assert entry[1]["required"] == ["input"]
    assert entry[1]["properties"]["profile"]["enum"] == ["", "live", "storage"]
    assert entry[1]["properties"]["queue_frames"]["maximum"] == 16
    assert {"input", "outputs", "profile", "record"} <= set(entry[1]["properties"])
    assert entry[1]["properties"]["outputs"]["description"].startswith("stream outputs")
    assert re.fullmatch(cameras["propertyNames"]["pattern"], "front_door")
    assert not re.fullmatch(cameras["propertyNames"]["pattern"], "a/b")


def test_the_configuration_reference_is_current():
    """docs/configuration.md is generated from the dataclasses: regenerate it with
    `edge-semvc config --reference > docs/configuration.md` after changing a default."""
    from pathlib import Path

    from edge_semvc.serve.config import reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == reference()
    assert "| `cameras.<name>.input` |" in reference() and "| `mqtt.host` |" in reference()
