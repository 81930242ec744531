from pathlib import Path

import pytest

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
def clip():
    return lambda name: shared_file("data", "video", name)



@pytest.fixture
def fixture_model():
    """A test-fixture model from ../shared/models (skips when absent)."""
    return lambda name: shared_file("models", name)
