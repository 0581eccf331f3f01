"""A checkpoint's resolution belongs to the checkpoint: the NoisyStudent L2 released at 475 px is the
L2 architecture (one registry entry) with a 475 px checkpoint, still named ``l2-475`` for users."""
from dataclasses import replace

import pytest

from converter.families.efficientnet.arch import ARCHS, MAIN_FAMILY, RELEASES
from converter.registry import architecture_name, get_arch, variant_names
from converter.errors import ConversionError
from converter.families.efficientnet.checkpoints import CHECKPOINTS
from converter.registry import find_checkpoint


def test_registry_holds_l2_once():
    assert "l2" in ARCHS and not any(k.startswith("l2-") or k.startswith("l2_") for k in ARCHS)
    assert RELEASES == {"l2-475": ("l2", 475)}  # registered from the zoo's -475px row
    # the name users type is still known, after its architecture, everywhere names are listed
    names = variant_names()
    assert names.index("l2-475") == names.index("l2") + 1
    assert MAIN_FAMILY.index("l2-475") == MAIN_FAMILY.index("l2") + 1


@pytest.mark.parametrize("spelling", ["l2-475", "L2_475", "efficientnet-l2-475"])
def test_release_is_the_l2_architecture_at_475(spelling):
    spec = get_arch(spelling)
    assert spec.name == "l2-475" and spec.resolution == 475
    assert replace(spec, name="l2", resolution=800) == ARCHS["l2"]  # everything else is L2's
    assert architecture_name(spec.name) == "l2" and architecture_name("b3") == "b3"


def test_checkpoint_carries_the_resolution():
    ckpt = find_checkpoint("l2-475", "noisystudent")
    assert (ckpt.variant, ckpt.arch_name, ckpt.release_resolution, ckpt.resolution) == ("l2-475", "l2", 475, 475)
    assert ckpt.relative_path == "noisystudent/noisy_student_efficientnet-l2_475.tar.gz"
    assert ckpt.pretrained_cfg()["input_size"] == [3, 475, 475]
    full = find_checkpoint("l2", "noisystudent")
    assert (full.release_resolution, full.resolution) == (None, 800)
    # only the 475 px L2 is released at another resolution than its architecture's
    assert [c.variant for c in CHECKPOINTS if c.release_resolution] == ["l2-475"]


def test_unknown_release_is_one_line_error():
    with pytest.raises(ConversionError, match="unknown variant 'l2-476'.*l2, l2-475"):
        get_arch("l2-476")
