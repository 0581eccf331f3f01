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
