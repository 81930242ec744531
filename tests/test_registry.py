"""One way to pick an implementation by name (edge_semvc/registry.py): every registry names
what it picks and the known names when a name is unknown, imports on first use, and answers
"can it run here?" as None or the reason."""
import pytest

from edge_semvc.encoders import ENCODERS, EncoderError
from edge_semvc.errors import ConfigError, LabelerError, SourceError
from edge_semvc.labeler.adapters import ADAPTERS, MaskAdapter
from edge_semvc.labeler.registry import DECODERS
from edge_semvc.labeler.runtime import RUNTIMES
from edge_semvc.qp import QP_DEVICES
from edge_semvc.registry import Registry
from edge_semvc.sources import SOURCES, open_source


@pytest.mark.parametrize("registry,error", [
    (ENCODERS, EncoderError), (RUNTIMES, LabelerError), (ADAPTERS, LabelerError),
    (SOURCES, SourceError), (QP_DEVICES, ConfigError)])
def test_an_unknown_name_is_refused_naming_the_known_ones(registry, error):
    with pytest.raises(error, match=f"unknown {registry.kind} 'nope' \\(known: "
                                    f"{', '.join(registry.names())}\\)"):
        registry.get("nope")
    assert registry.why_unavailable("nope").startswith(f"unknown {registry.kind}")


def test_every_entry_imports_or_says_why():
    for registry in (ENCODERS, RUNTIMES, ADAPTERS, SOURCES, QP_DEVICES):
        for name in registry.names():
            why = registry.why_unavailable(name)
            assert why is None or (isinstance(why, str) and why), (registry.kind, name)
    assert ENCODERS.why_unavailable("x264") is None  # libx264 is installed by `make`
    assert RUNTIMES.why_unavailable("onnxruntime") is None
    assert ADAPTERS.get("db-text") is MaskAdapter
    assert set(ADAPTERS.names()) == set(DECODERS)  # each decoder the registry knows has one


def test_an_implementation_that_cannot_be_imported_is_a_clear_error():
    reg = Registry("widget", {"w": "edge_semvc.no_such_module:W"}, ConfigError)
    with pytest.raises(ConfigError, match="widget 'w' cannot be imported"):
        reg.get("w")
    assert "cannot be imported" in reg.why_unavailable("w")


def test_sources_are_picked_by_scheme():
    assert open_source("demo://").description
    with pytest.raises(SourceError, match="unsupported input URI scheme 'ftp://'"):
        open_source("ftp://x")


def test_model_entries_resolve_once_into_typed_specs():
    from edge_semvc.errors import ConfigError
    from edge_semvc.labeler.registry import model_specs

    specs = model_specs(["face_detection_short_range", {"name": "nanodet_g", "threshold": 0.4}])
    assert [(s.key, s.name, s.decoder) for s in specs] == [
        ("labeler.models[0]", "face_detection_short_range", "ssd-anchors"),
        ("labeler.models[1]", "nanodet_g", "nanodet")]
    assert "face" in specs[0].products and specs[1].description["threshold"] == 0.4
    with pytest.raises(ConfigError, match=r"labeler.models\[0\]: unknown model 'nope'"):
        model_specs(["nope"])
