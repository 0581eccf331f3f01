"""Official variable names that carry graph-wide Keras layer counters, matched by place and order.

Keras names a layer ``conv2d``, ``conv2d_1``, ... in creation order over the whole graph, so a
checkpoint's counters depend on everything its training graph created before (and, built with
today's tf_keras, some names gain a model element). CondConv kernels (tensorflow/tpu condconv) and
every MnasNet/MixNet conv (tensorflow/tpu mnasnet) are named so. Within one place (a block, a
layer type, a variable) the order of the counters is the creation order, which is fixed: names
are paired by that order. Pure Python; used by converter.mapping (conversion) and
converter.tfref (the reference), and by the MnasNet family (converter/families/mnasnet/).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Hashable, Iterable, List, Tuple

from .errors import ConversionError

EMA_SUFFIX = "/ExponentialMovingAverage"


def counter_name(base: str, n: int) -> str:
    """Keras' unique layer names: ``base``, ``base_1``, ``base_2``, ..."""
    return base if n == 0 else f"{base}_{n}"


def match_counters(wanted: Iterable[str], available: Iterable[str], pattern: "re.Pattern[str]",
                   key: Callable[["re.Match[str]"], Hashable],
                   describe: Callable[[Hashable], Tuple[str, str]], suffix: str = "") -> Dict[str, str]:
    """{wanted name: the checkpoint's own name} for the names ``pattern`` matches (EMA twins read as their base).

    ``pattern`` has a group ``n``, the counter (absent: 0); ``key(match)`` the place of a name.
    Per place, the wanted names (in their counter order) pair with the available ones (in theirs);
    a place whose counts differ, or whose available counters repeat, raises ConversionError
    ``"PLACE: expected N WHAT variable(s), the checkpoint has M (names)SUFFIX"`` with
    ``describe(key) -> (PLACE, WHAT)``. Places the checkpoint lacks entirely are left out (the
    caller reports them missing).
    """
    found: Dict[Hashable, Dict[str, int]] = {}
    for name in available:
        base = name[:-len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name
        m = pattern.match(base)
        if m:
            found.setdefault(key(m), {})[base] = int(m["n"] or 0)
    groups: Dict[Hashable, List[Tuple[int, str]]] = {}
    for name in wanted:
        m = pattern.match(name)
        if m:
            groups.setdefault(key(m), []).append((int(m["n"] or 0), name))
    out: Dict[str, str] = {}
    for k, group in groups.items():
        have = found.get(k)
        if not have:
            continue
        ordered = sorted(have, key=have.__getitem__)
        if len(ordered) != len(group) or len(set(have.values())) != len(have):
            place, what = describe(k)
            raise ConversionError(f"{place}: expected {len(group)} {what} variable(s), the checkpoint has "
                                  f"{len(ordered)} ({', '.join(ordered)}){suffix}")
        out.update(zip((n for _, n in sorted(group)), ordered))
    return out
