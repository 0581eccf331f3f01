"""The parsed arguments are not rewritten on the way (issue 15, point 3): what the run decides
(the variant inferred from the checkpoint's scope, dropping EdgeTPU's background class for a
library layout) stays local to the run."""
import pytest
from safetensors import safe_open

from converter.cli import _convert_parser, run_convert
from helpers import make_checkpoint

pytest.importorskip("tensorflow")


def test_run_convert_leaves_the_namespace_alone(tmp_path_factory, tmp_path):
    prefix = make_checkpoint(tmp_path_factory.mktemp("edgetpu"), "edgetpu-s", num_classes=1001)
    args = _convert_parser().parse_args(["--checkpoint", str(prefix), "--layout", "timm",
                                         "--output-dir", str(tmp_path), "--quiet"])
    before = dict(vars(args))
    assert before["variant"] is None and before["drop_background"] is None
    assert run_convert(args) == 0
    assert vars(args) == before
    # and the decisions were taken all the same: edgetpu-s inferred, its background class dropped
    (out,) = tmp_path.glob("efficientnet-edgetpu-s_standard*.safetensors")
    with safe_open(str(out), framework="np") as f:
        assert f.metadata()["variant"] == "edgetpu-s" and f.metadata()["num_classes"] == "1000"
