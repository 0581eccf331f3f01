import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "model-zoo.csv").is_file():
        pytest.fail(f"reference facts not found at {REFERENCE} (shared/ must sit beside the repo)")
    return REFERENCE


@pytest.fixture(scope="session", autouse=True)
def checkpoint_store(tmp_path_factory):
    """One folder of generated checkpoints for the session, shared with subprocess test runs."""
    from helpers import STORE_ENV

    if not os.environ.get(STORE_ENV):
        os.environ[STORE_ENV] = str(tmp_path_factory.mktemp("checkpoint-store"))
    return Path(os.environ[STORE_ENV])
