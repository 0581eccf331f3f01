"""A layout: the declaration each table file in mappings/ makes (``LAYOUT = Layout(...)``).

It says what the table targets (its library's model for each variant), what it refuses and why,
where its library computes differently (caveats), and the form of its output (file name, ``.pth``
payload, a file or a folder). converter.mapping finds the declarations by walking this package
(``layouts()``, ``get_layout``); the CLI's ``--layout`` choices and help come from there. Adding a
layout = one new table file declaring its ``LAYOUT`` + its tests.

This module imports no table and nothing that imports the tables at module level (the methods that
expand a table import converter.mapping when called), so every table file can import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

from ..arch import FUSED_STRIDE_EXPAND, FUSED_STRIDE_PROJECT, fused_stride_exact
from ..errors import ConversionError

# a table's fused_stride_on (where its library's fused block strides) -> arch.FUSED_STRIDES name
FUSED_STRIDE_ON = {"kxk": FUSED_STRIDE_EXPAND, "1x1": FUSED_STRIDE_PROJECT}
PTH_FORMS = ("state_dict", "mmengine")
FILE_FORMS = ("file", "folder")
_CONVS = {FUSED_STRIDE_EXPAND: "kxk expand conv", FUSED_STRIDE_PROJECT: "1x1 project conv"}


@dataclass(frozen=True, eq=False, repr=False)
class Layout:
    """One layout of the converted weights, as a table file declares it."""

    name: str  # the --layout value
    summary: str = ""  # what it is, for --layout's help (the declaration for EfficientNet's names)
    # our variant -> the library's model/arch name; None: every variant (native)
    variants: Optional[Mapping[str, str]] = None
    # variant -> why the library's model of that name cannot hold the official weights
    not_official: Mapping[str, str] = field(default_factory=dict)
    # the families whose official names this table maps; (): every family without a table of its own
    families: Tuple[str, ...] = ()
    # where the library's fused block strides ("kxk" / "1x1", FUSED_STRIDE_ON); None: as the spec says
    fused_stride_on: Optional[str] = None
    pth_form: str = "state_dict"  # "mmengine": {"state_dict": ..., "meta": ...} (mmengine load_checkpoint)
    file_form: str = "file"  # "folder": a folder its own writer fills (``writer``)
    # a folder layout's writer: the module (dotted name, imported when used) with ``folder_converter``
    # (convert's twin), ``commit_folder``, ``folder_weights``, ``add_verification`` and ``REPORT_NAME``
    writer: Optional[str] = None
    native: bool = False  # the layout of converter.model itself: files named without a suffix
    # (spec) -> {block index: format fields}: fields its rows use beyond the generic and the kinds' ones
    fields: Optional[Callable[[object], Dict[int, Dict[str, object]]]] = None

    def __post_init__(self):
        if self.fused_stride_on not in (None, *FUSED_STRIDE_ON):
            raise ValueError(f"layout {self.name}: fused_stride_on {self.fused_stride_on!r} not in {tuple(FUSED_STRIDE_ON)}")
        if self.pth_form not in PTH_FORMS or self.file_form not in FILE_FORMS:
            raise ValueError(f"layout {self.name}: pth_form in {PTH_FORMS}, file_form in {FILE_FORMS}")
        if (self.file_form == "folder") != (self.writer is not None):
            raise ValueError(f"layout {self.name}: a folder layout names its writer, a file layout none")

    def form(self) -> Tuple:
        """What the layout's name alone decides (the same in every family's declaration of it)."""
        return self.native, self.pth_form, self.file_form, self.writer

    def folder_writer(self):
        """The module that writes and reads this folder layout (``writer``)."""
        import importlib

        return importlib.import_module(self.writer)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Layout({self.name!r}{f', families={self.families}' if self.families else ''})"

    def check_variant(self, spec) -> None:
        """Refuse (ConversionError) a variant this layout's library has no model for."""
        arch = spec.arch_name  # a release at another resolution (l2-475): its architecture's model
        why = self.not_official.get(arch)
        if why:
            raise ConversionError(f"layout {self.name} has no model for variant {spec.name}: {why}; use --layout native")
        if self.variants is not None and arch not in self.variants:
            raise ConversionError(f"layout {self.name} has no model for variant {spec.name} "
                                  f"(it has {', '.join(self.variants)}); use --layout native")

    def library_model(self, spec) -> str:
        """The name of ``spec``'s model in this layout's library (else the variant's name)."""
        return (self.variants or {}).get(spec.arch_name, spec.name)

    def library_fused_stride(self) -> Optional[str]:
        """Where the library's model strides a fused block (arch.FUSED_STRIDES), None: as the spec says."""
        return None if self.fused_stride_on is None else FUSED_STRIDE_ON[self.fused_stride_on]

    def caveat(self, spec) -> Optional[str]:
        """One line on where this layout's library computes differently from ``spec``, or None.

        The weights are exact in every layout. timm's and mmpretrain's EdgeResidual stride the kxk
        expand conv (``fused_stride_on="kxk"``), as the official code does since tensorflow/tpu
        32572cb: exact for the default placement; for a file converted with the 2019 placement
        (``--fused-stride project``) only at input sizes where every strided fused block sees an
        odd input (converter.arch.fused_stride_exact).
        """
        lib = self.library_fused_stride()
        if lib is None or lib == spec.fused_stride or not spec.has_strided_fused:
            return None
        res = spec.resolution
        near = sorted((s for s in range(max(res - 16, 1), res + 17) if fused_stride_exact(spec, s, lib)),
                      key=lambda s: (abs(s - res), s))[:4]
        return (f"{self.name}'s {self.library_model(spec)} strides its fused blocks' {_CONVS[lib]}, this file's "
                f"--fused-stride {spec.fused_stride} the {_CONVS[spec.fused_stride]}: its logits equal this placement's "
                f"only at input sizes where the strided fused blocks see odd inputs (e.g. {', '.join(map(str, sorted(near)))}; "
                f"not {res}); the weights are exact, --layout native computes this placement at every size")

    def output_stem(self, name: str) -> str:
        """File name stem of a conversion: ``efficientnet-b4_advprop`` (native) or ``efficientnet-b4_advprop.timm``."""
        return name if self.native else f"{name}.{self.name}"

    def pth_payload(self, state_dict, encoded: Dict[str, str]):
        """What ``torch.save`` writes for a ``.pth`` output, in the form this layout's library reads.

        ``state_dict``: the state_dict itself, the metadata in its ``effnet_metadata`` attribute;
        ``mmengine`` (mmpretrain): ``{"state_dict": ..., "meta": metadata}``, which
        ``mmengine.runner.load_checkpoint`` reads.
        """
        if self.pth_form == "mmengine":
            return {"meta": dict(encoded), "state_dict": state_dict}
        from ..metadata import PTH_ATTRIBUTE

        setattr(state_dict, PTH_ATTRIBUTE, dict(encoded))
        return state_dict
