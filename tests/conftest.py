import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
_STORE_MADE = []
REFERENCE = REPO.parent / "shared" / "reference"


def pytest_configure(config):
    """Under pytest-xdist the controller names one checkpoint store that every worker inherits."""
    from helpers import STORE_ENV

    if not hasattr(config, "workerinput") and not os.environ.get(STORE_ENV):
        import tempfile

        _STORE_MADE.append(tempfile.mkdtemp(prefix="effnet-checkpoint-store-"))
        os.environ[STORE_ENV] = _STORE_MADE[0]


# The fast tier (`make test-fast`: unit tests and small conversions, a few minutes on 2 cores) leaves out
# these files: TensorFlow reference runs at many sizes, every family end to end, the libraries' own
# environments and subprocess CLIs. `make test` (CI) runs everything not marked slow.
HEAVY_FILES = frozenset({
    "test_parity.py", "test_v2.py", "test_fast.py", "test_without_tensorflow.py", "test_tfref.py",
    "test_keras.py", "test_trust.py", "test_predict.py", "test_mnasnet.py", "test_tarball.py",
    "test_trace.py", "test_list.py", "test_layouts.py", "test_transformers.py", "test_batch.py",
    "test_tfimport.py", "test_cli_defects.py", "test_export.py", "test_verify_verdict.py",
    "test_distributed.py", "test_efficientnet_pytorch.py",
    "test_training.py",  # a TensorFlow train-mode reference per family
    "test_audit.py",  # each audit: a TensorFlow reference and the library's model in its environment
})
# ... and these tests of the other files (the libraries' environment, TensorFlow verification CLIs,
# the largest variants)
HEAVY_TESTS = frozenset({
    "test_family_libraries_load_strictly_same_logits", "test_family_tables_equal_library_state_dicts",
    "test_cli_edgetpu_drop_background_and_verify", "test_cli_timm_edgetpu_caveat_and_verify",
    "test_library_layouts_background_class", "test_reference_cli_and_verify_follow_the_metadata",
    "test_convert_every_variant[b5]", "test_convert_every_variant[b6]", "test_convert_every_variant[b7]",
    "test_convert_every_variant[b8]", "test_convert_every_variant[l2]",
    # test_finetune.py: the README example (b0 trained on CPU), TensorFlow's crop sampler
    "test_readme_fine_tuning_example_runs_as_written", "test_train_crop_distribution_is_tensorflows",
    # test_tf_export.py: a TensorFlow process per export (round trips, official logits, every TF output)
    "test_round_trip_every_family", "test_official_code_logits_come_back", "test_finetuned_file_every_output",
    "test_other_layouts_export_the_same_checkpoint", "test_ctrl_c_stops_the_tensorflow_process",
    # test_endpoints.py: TensorFlow reference, scripting, ONNX export
    "test_every_endpoint_equals_the_tensorflow_reference", "test_a_wrong_expansion_output_fails_against_the_reference",
    "test_torchscript_backbone_loads_back_and_matches", "test_onnx_backbone_runs_in_onnx_runtime",
})


def pytest_collection_modifyitems(config, items):
    """Mark the tests of HEAVY_FILES and HEAVY_TESTS ``heavy`` (deselected by ``-m "not heavy"``)."""
    for item in items:
        if item.path.name in HEAVY_FILES or item.name in HEAVY_TESTS or item.originalname in HEAVY_TESTS:
            item.add_marker(pytest.mark.heavy)


def pytest_unconfigure(config):
    import shutil

    for folder in _STORE_MADE:
        shutil.rmtree(folder, ignore_errors=True)


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
