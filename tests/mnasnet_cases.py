"""Cases shared by tests/test_mnasnet.py and tests/data/official_mnasnet.py (no dependencies).

``CASES``: (case, resolution) of the checkpoints whose logits the OFFICIAL code computed
(tests/data/mnasnet_official_logits.npz): generate_checkpoint(seed 0, EMA-only, calibrated on 2
calibration images at that resolution). ``mixnet-uneven`` is a MixNet of the official code
whose groups split channels with remainders (``UNEVEN_BLOCKS``, depth_multiplier None: the
filters as written): none of the released MixNets has one.
"""
UNEVEN_BLOCKS = (
    "r1_k3_a1_p1_s11_e1_i16_o16",
    "r2_k3.5.7_a1.1.1_p1.1.1_s22_e5_i16_o26_se0.25_sw",
    "r1_k3.5_a1_p1.1_s22_e3_i26_o30_se0.5",
)
CASES = (("mixnet-uneven", 49), ("mixnet-s", 64), ("mnasnet-a1", 67), ("mnasnet-small", 64),
         ("mnasnet-a1_d0.35", 64))
SEED = 0
N_IMAGES = 2


def uneven_spec():
    """The ``mixnet-uneven`` architecture (mixnet-s's global params, UNEVEN_BLOCKS, no rounding)."""
    from dataclasses import replace

    from converter.registry import get_arch

    return replace(get_arch("mixnet-s"), name="mixnet-uneven", width=0.0, block_strings=UNEVEN_BLOCKS)


def case_spec(name):
    from converter.registry import get_arch

    return uneven_spec() if name == "mixnet-uneven" else get_arch(name)
