"""``convert-effnet audit``: is a port of an official checkpoint exact, and if not, why.

    convert-effnet audit --checkpoint CK --weights FILE [--layout L] [--model NAME] [--variant V]
                         [--flavor F] [--images IMG...] [--json OUT]

Three questions, each answered against the official checkpoint CK:

1. weights (converter/audit/weights.py): FILE mapped back to the official variables through L's
   table; every official tensor equal to its EMA twin, its raw twin, neither, or missing;
2. model (converter/audit/model.py): the library's own model with FILE's weights against the
   TensorFlow reference, tap by tap as ``verify --trace``; the first diverging stage and a diagnosis;
3. preprocessing (converter/audit/prep.py): the library's declared preprocessing against the
   flavor's official eval, each difference with its measured effect on the logits.

FILE need not come from this toolkit: its layout and variant are found from its keys and shapes
(converter/audit/files.py). Exit 0: all three exact; 3: something differs; 2: bad input (one line).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ConversionError

log = logging.getLogger("converter")

EXIT_EXACT, EXIT_DIFFERS = 0, 3
DEFAULT_IMAGES = 2  # synthetic images of the model check without --images (every tap is held in memory)
MAX_MODEL_IMAGES = 4  # the model check's images at most (the first ones; the preprocessing check takes them all)
NO_MODEL = {"keras": "the audit runs PyTorch libraries' models; a Keras model is checked by its weights"}


def _parser() -> argparse.ArgumentParser:
    from ..mapping import layouts

    p = argparse.ArgumentParser(prog="convert-effnet audit",
                                description="Audit a PyTorch (or Keras) port of an official checkpoint: weights, "
                                            "model and preprocessing against the official ones.")
    p.add_argument("--checkpoint", required=True, metavar="CK", help="the official checkpoint (tarball, folder or prefix)")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="the port: a .pth/.safetensors state_dict, an mmpretrain checkpoint, a transformers folder, "
                        "a keras.applications .h5")
    p.add_argument("--layout", choices=[*layouts(), "keras"], default=None,
                   help="FILE's layout (default: found from its keys)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the library's model: a timm model name (default tf_efficientnet_*), an mmpretrain zoo name "
                        "(default: the flavor's), a transformers class (default EfficientNetForImageClassification), an "
                        "efficientnet_pytorch name (default efficientnet-bN)")
    p.add_argument("--variant", default=None, help="the variant (default: FILE's metadata, else its shapes)")
    p.add_argument("--flavor", default=None, help="the flavor, for its official eval (default: FILE's metadata)")
    p.add_argument("--images", nargs="+", default=[], metavar="IMG", help="photos (default: synthetic images)")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size of the model check (default: the flavor's); preprocessing is always checked "
                        "at the flavor's own")
    p.add_argument("--num-images", type=int, default=None,
                   help=f"synthetic images of the model check (default {DEFAULT_IMAGES}, none with --images)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="timm: keyword arguments of create_model, as a JSON object (e.g. '{\"pad_type\": \"same\"}')")
    p.add_argument("--pretrained-cfg", default=None, metavar="JSON",
                   help="timm: a pretrained_cfg (JSON file) to audit instead of the model's own")
    p.add_argument("--libs-python", default=None, metavar="PYTHON",
                   help="the interpreter with the layout's library (default $EFFNET_LIBS_PYTHON, else this one)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--debug", action="store_true", help="a traceback with any error")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``convert-effnet audit ...`` (``argv`` without the subcommand); 0 exact, 3 differs, 2 bad input."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    report = run_audit(args)
    print(format_report(report))
    return EXIT_EXACT if report["verdict"] == "exact" else EXIT_DIFFERS


# --------------------------------------------------------------------------- the steps


def _pick(cands, af, args, reader):
    """The one (layout, variant) FILE is, from the candidates that fit its keys."""
    from ..convert import checkpoint_scopes
    from ..registry import get_arch

    if not cands:
        raise ConversionError(_no_fit(af, args))
    scopes = set(checkpoint_scopes(reader))
    fit = [c for c in cands if get_arch(c.variant).scope in scopes]
    if not fit:
        c = cands[0]
        raise ConversionError(f"{af.path} is a {c.variant} file ({c.layout} layout) but the checkpoint's scope is "
                              f"{', '.join(sorted(scopes))}: pass the checkpoint of the file's variant")
    want = af.meta.get("variant")
    fit.sort(key=lambda c: (c.variant != want, get_arch(c.variant).name != get_arch(c.variant).arch_name,
                            c.layout != af.meta.get("layout")))
    return fit[0]


def _no_fit(af, args) -> str:
    """One line: FILE's keys fit no layout; the nearest table and how far it is."""
    from ..mapping import expand
    from ..mapping import layouts as all_layouts
    from ..registry import variant_names

    have = set(af.tensors)
    best = None
    for lay in ([args.layout] if args.layout else list(all_layouts())):
        for v in ([args.variant] if args.variant else variant_names()):
            try:
                keys = {e.key for e in expand(v, lay)}
            except ConversionError:
                continue
            score = len(keys ^ have)
            if best is None or score < best[0]:
                best = (score, lay, v, sorted(keys - have), sorted(have - keys))
    what = f"{af.path}'s {len(have)} keys fit no layout's table"
    if best is None:
        return what + (f" (--layout {args.layout} --variant {args.variant} has no table)" if args.variant else "")
    _, lay, v, missing, extra = best
    from ..errors import listing

    return (f"{what}; nearest: {lay} {v} ({len(missing)} missing: {listing(missing) if missing else 'none'}; "
            f"{len(extra)} unexpected: {listing(extra) if extra else 'none'}); pass --layout/--variant if it is one")


def _flavor(args, af, variant: str, classes: int):
    """(checkpoint row, note): the flavor from the flag, FILE's metadata, else the variant's flavors whose
    eval is one (else the most common eval, said in the note)."""
    from ..registry import all_checkpoints, find_checkpoint, get_arch

    flavor = args.flavor or af.meta.get("flavor")
    if flavor and flavor != "keras":
        return find_checkpoint(variant, flavor), None
    name = get_arch(variant).name
    ck = Path(str(args.checkpoint)).expanduser().resolve().as_posix()
    named = [c for c in all_checkpoints() if c.variant == name and (
        ck.endswith("/" + c.relative_path) or "/" + c.relative_path.split(".tar")[0] + "/" in ck + "/")]
    if len(named) == 1:  # a cached download keeps the bucket's path (advprop/efficientnet-b0.tar.gz)
        return named[0], None
    rows = [c for c in all_checkpoints() if c.variant == name and c.num_classes in (classes, classes + 1)] or \
        [c for c in all_checkpoints() if c.variant == name]
    if not rows:
        raise ConversionError(f"no official checkpoint of {name}: see --list")
    evals: Dict[tuple, list] = {}
    for c in rows:
        evals.setdefault((c.mean, c.std, round(c.crop_pct, 6), c.interpolation, c.preprocessing, c.resolution), []).append(c)
    groups = sorted(evals.values(), key=len, reverse=True)
    if len(groups) == 1:
        return groups[0][0], None
    chosen = groups[0]
    others = ", ".join(c.flavor for g in groups[1:] for c in g)
    return chosen[0], (f"flavor not given: assumed the eval of {', '.join(c.flavor for c in chosen)} "
                       f"({others} evaluate differently): pass --flavor")


def _official_model(reader, spec):
    """converter.model with the checkpoint's EMA weights (the official model, exact by verification)."""
    from ..convert import iter_tensors, select
    from ..model import build_model

    import torch

    sel = select(reader, spec)
    model = build_model(spec)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in iter_tensors(reader, sel)}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _file_native_model(af, spec, classes: int):
    """converter.model with FILE's tensors (--layout native), loaded non-strictly (the weights say what is off)."""
    from ..model import build_model

    import torch

    model = build_model(spec.with_classes(int(classes)))
    sd = {k: torch.from_numpy(np.array(v)) for k, v in af.tensors.items()}
    model.load_state_dict(sd, strict=False)
    return model.eval()


def run_audit(args) -> Dict[str, object]:
    """The audit report (a JSON-able dict; ``verdict``: exact or differs)."""
    from ..convert import checkpoint_num_classes
    from ..mapping import expand, resolve_names
    from ..registry import get_arch
    from ..sources import Source, classify as classify_source
    from . import model as M
    from . import prep as P
    from . import weights as W
    from .files import KERAS, candidates, read_file

    if args.num_images is not None and args.num_images < 0:
        raise ConversionError(f"--num-images must be 0 or more, got {args.num_images}")
    if args.resolution is not None and not 32 <= args.resolution <= 2048:
        raise ConversionError(f"--resolution {args.resolution}: use 32..2048 px")
    from ..verify import check_image_file

    for f in args.images:
        check_image_file(f)
    if args.json:  # where the report goes is checked before anything runs
        from ..writer import check_writable_folder

        out = Path(args.json)
        if out.is_dir():
            raise ConversionError(f"--json {out} is a folder; name a file (e.g. audit.json)")
        if not out.parent.is_dir():
            raise ConversionError(f"--json {out}: folder {out.parent} does not exist")
        check_writable_folder(out.parent, "--json folder")
    overlay = None
    if args.pretrained_cfg:
        try:
            overlay = json.loads(Path(args.pretrained_cfg).read_text())
        except (OSError, ValueError) as e:
            raise ConversionError(f"--pretrained-cfg {args.pretrained_cfg}: {e}") from None
    kwargs = {}
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except ValueError as e:
            raise ConversionError(f"--model-kwargs: not a JSON object: {e}") from None
        if not isinstance(kwargs, dict):
            raise ConversionError("--model-kwargs: not a JSON object (e.g. '{\"bn_eps\": 0.001}')")
    args.model_kwargs = kwargs
    if classify_source(args.checkpoint) == "keras":
        raise ConversionError(f"--checkpoint {args.checkpoint} is a Keras .h5: the audit compares against an official "
                              "TensorFlow checkpoint (pass a Keras file as --weights)")
    af = read_file(args.weights)
    if af.form == KERAS and args.layout not in (None, KERAS):
        raise ConversionError(f"--weights {args.weights} is a Keras .h5, not the {args.layout} layout")
    src = Source.open(args.checkpoint, need_files=True)
    try:
        layouts = [args.layout] if args.layout else None
        variants = [args.variant] if args.variant else None
        cand = _pick(candidates(af, layouts, variants), af, args, src.reader)
        layout = cand.layout
        if layout in M.LIBRARIES:  # before anything heavy: the interpreter that runs the library
            M.libs_python(args.libs_python, M.LIBRARIES[layout])
        table_layout = "native" if layout == KERAS else layout
        spec = get_arch(cand.variant).with_fused_stride(af.meta.get("fused_stride"))
        ck_classes = checkpoint_num_classes(src.reader, spec) or spec.num_classes
        spec = spec.with_classes(int(ck_classes))
        entries = resolve_names(spec, expand(spec, table_layout), src.reader.names())
        keras = layout == KERAS
        weights = W.classify(src.reader, entries, af.tensors, tf_layout=keras,
                             key_of=(lambda e: e.tf_name) if keras else None)
        ckpt, flavor_note = _flavor(args, af, cand.variant, cand.num_classes)
        report: Dict[str, object] = {
            "weights_file": str(af.path), "checkpoint": str(args.checkpoint), "layout": layout, "form": af.form,
            "variant": spec.name, "flavor": ckpt.flavor, "flavor_note": flavor_note,
            "file_num_classes": cand.num_classes, "checkpoint_num_classes": int(ck_classes),
            "weights": dict(weights["counts"]), "weights_extras": weights["extras"],
            "weights_copy": weights["copy"], "weights_rows": weights["rows"],
        }
        if af.meta.get("source_sha256"):  # effnet-convert metadata: the checkpoint the file says it came from
            ck_sha = src.sha256.result()
            report["provenance"] = {"file_source": af.meta.get("source"), "file_source_sha256": af.meta["source_sha256"],
                                    "checkpoint_sha256": ck_sha, "same": af.meta["source_sha256"] == ck_sha}
        official_model = _official_model(src.reader, spec)
        file_state = W.in_native(official_model.state_dict(), spec, entries, af.tensors, tf_layout=keras,
                                 key_of=(lambda e: e.tf_name) if keras else None)
        with tempfile.TemporaryDirectory(prefix="effnet-audit-") as tmp:
            files = list(args.images) or P.synthetic_files(Path(tmp))
            prefix, ref_weights = src.prefix, ("EMA" if weights["copy"] == "ema" else "raw")
            c = weights["counts"]
            if c["ema"] != sum(c.values()) and c["raw"] != sum(c.values()):
                # neither EMA nor raw throughout: the reference computes with the file's own weights, so that the
                # model question is answered apart from the weights
                arrays = W.official_arrays(src.reader, entries, af.tensors, tf_layout=keras,
                                           key_of=(lambda e: e.tf_name) if keras else None)
                prefix, ref_weights = M.write_tf_checkpoint(arrays, Path(tmp)), "the file's own"
            info, lib_arrays = _model_check(args, report, prefix, ref_weights, spec, entries, layout, af, ckpt, files,
                                            overlay)
            _prep_check(report, layout, info, af, ckpt, official_model, files, lib_arrays)
            if not (report["weights"]["ema"] == sum(report["weights"].values())):
                report["weights_effect"] = _weights_effect(official_model, file_state, ckpt, files)
    finally:
        src.close()
    counts = report["weights"]
    weights_exact = counts["ema"] == sum(counts.values()) and not report["weights_extras"]
    model_exact = report["model"].get("exact") in (True, None)
    prep_exact = (None if report.get("preprocessing_figures", {}).get("skipped")
                  else not any(d["counts"] for d in report["preprocessing"]))
    report["exact"] = {"weights": weights_exact, "model": report["model"].get("exact"), "preprocessing": prep_exact}
    report["verdict"] = "exact" if weights_exact and model_exact and prep_exact in (True, None) else "differs"
    if args.json:
        _write_json(Path(args.json), report)
    return report


def _model_check(args, report, prefix, ref_weights, spec, entries, layout, af, ckpt, files, overlay):
    """Question 2, into ``report["model"]``, ``report["first_divergence"]``, ``report["diagnosis"]``;
    returns the driver's info and the library's preprocessed arrays of ``files`` (None: not run)."""
    from ..verify import image_names, reference_logits, verification_images
    from ..verify.trace import Tracer
    from . import model as M

    report["first_divergence"], report["diagnosis"] = None, []
    plan = M.tap_plan(spec, entries)
    # a transformers folder is padded for one input size (its config's image_size): checked there
    res = int(args.resolution or (layout == "transformers" and af.config.get("image_size")) or ckpt.resolution)
    n = args.num_images if args.num_images is not None else (0 if args.images else DEFAULT_IMAGES)
    n = min(n, MAX_MODEL_IMAGES)
    photos = list(args.images)[:max(MAX_MODEL_IMAGES - n, 0)]
    from ..registry import preprocessing_of

    cfg = ckpt.pretrained_cfg()
    images = verification_images(res, ckpt.mean, ckpt.std, n, photos, ckpt.crop_pct if res == ckpt.resolution
                                 else None, preprocessing_of(cfg))
    names = image_names(res, n, photos)
    info, arrays = None, {}
    lib_arrays = None
    if layout in M.LIBRARIES:
        python = M.libs_python(args.libs_python, M.LIBRARIES[layout])
        job = {"library": M.LIBRARIES[layout], "model": _library_model(args, layout, spec, ckpt, af),
               "num_classes": report["file_num_classes"], "file": str(af.path),
               "taps": [[t, m, h] for t, _, _, m, h in plan], "variants": M.VARIANTS, "bn_eps": float(spec.bn_eps), "activation": spec.activation, "image_size": res,
               "images": [str(f) for f in files],
               "pretrained_cfg": overlay if overlay is not None or layout != "timm" else af.config.get("pretrained_cfg"), "kwargs": args.model_kwargs}
        info, arrays = M.run_driver(python, job, {"x": images})
        lib_arrays = arrays.get("pre/images")
        report["library"] = {"model": job["model"], "load": info.get("load"), "declared": info.get("declared"),
                             "model_attributes": info.get("model"), "preprocess_error": info.get("preprocess_error")}
    elif layout == "native":
        arrays = M.native_run(_file_native_model(af, spec, report["file_num_classes"]), plan, {"x": images})
        report["library"] = {"model": "converter.model (native layout)"}
    else:
        report["model"] = {"exact": None, "skipped": NO_MODEL.get(layout, f"no library model for {layout}")}
        return info, lib_arrays
    tracer = Tracer(n_images=len(images))
    use_ema = ref_weights == "EMA"
    logits, *_ = reference_logits(prefix, spec.name, images, spec.num_classes, "cpu", use_ema,
                                  fused_stride=af.meta.get("fused_stride"), extra_args=tracer.reference_args(),
                                  module=tracer.MODULE)
    tf_taps = tracer.taps()
    runs = {}
    for vname in (M.VARIANTS if info is not None else {"base": []}):
        runs[vname] = M.compare(tf_taps, plan, arrays, f"{vname}/x", modules=M.layer_modules(entries))
    base = runs["base"]
    report["model"] = {"exact": base["exact"], "reference_weights": ref_weights,
                       "resolution": res, "images": names, "rows": base["rows"],
                       "variants": {k: {"exact": v["exact"], "first": v["first"]} for k, v in runs.items()},
                       "logits_rel_error": next((r["rel_error"] for r in base["rows"] if r["kind"] == "logits"), None)}
    first = base["first"]
    if first is not None:
        report["first_divergence"] = {"official": first["stage"], "layer": first["official"], "kind": first["kind"],
                                      "module": first["module"], "rel_error": first["rel_error"],
                                      "tolerance": first["tolerance"], "note": first["note"]}
        report["diagnosis"] = M.diagnose(spec, runs, info or {})
    return info, lib_arrays


def _library_model(args, layout, spec, ckpt, af) -> str:
    """--model, else the layout's model for the variant: timm tf_efficientnet_*, mmpretrain the flavor's zoo
    name, transformers EfficientNetForImageClassification."""
    from ..mapping import expand, library_model

    if args.model:
        return args.model
    if layout == "timm" and af.config.get("architecture"):  # a timm hub folder's config.json
        return str(af.config["architecture"])
    if layout == "mmpretrain":
        if ckpt.zoo_name:
            return ckpt.zoo_name
        # no zoo model (EdgeTPU): the model of mmpretrain's configs/_base_/models/efficientnet_{arch}.py
        head = [e for e in expand(spec, "mmpretrain") if e.key == "head.fc.weight"][0].shape[1]
        return f"arch:{library_model(spec, layout)}:{head}"
    return library_model(spec, layout)


def _prep_check(report, layout, info, af, ckpt, official_model, files, lib_arrays) -> None:
    from . import prep as P

    off = P.official(ckpt)
    if layout in ("timm", "mmpretrain", "transformers") and info is None:
        report["preprocessing"], report["preprocessing_figures"] = [], {"skipped": "the library did not run"}
        return
    try:
        dec = P.declared(layout, info or {}, af, off)
    except ConversionError as e:  # nothing declared to compare
        report["preprocessing"], report["preprocessing_figures"] = [], {"skipped": str(e)}
        return
    diffs = P.differences(off, dec)
    figures = P.measure(official_model, files, off, diffs, lib_arrays)
    report["preprocessing"] = diffs
    report["preprocessing_figures"] = {"official": {k: v for k, v in off.items() if k != "cfg"},
                                       "declared": dec, **figures}


def _weights_effect(official_model, file_state, ckpt, files) -> Dict[str, object]:
    """The file's weights in the official model against the official weights, on the official eval of
    ``files``: what the weights alone change in the logits."""
    import copy

    import torch

    from . import prep as P

    off = P.official(ckpt)
    x = torch.from_numpy(P._official_batch(files, off))
    other = copy.deepcopy(official_model)
    other.load_state_dict(file_state, strict=True)
    with torch.inference_mode():
        return P.effect(official_model(x).numpy(), other(x).numpy())


def _write_json(path: Path, report: Dict[str, object]) -> None:
    from ..writer import write_json

    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and not np.isfinite(x):
            return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    write_json(path, clean(report), f"--json {path}")


# --------------------------------------------------------------------------- the table


def format_report(r: Dict[str, object]) -> str:
    """The table printed on stdout; its last line is the verdict."""
    from .weights import summary_line

    lines = [f"audit of {r['weights_file']} ({r['layout']} layout, {r['form']}) against {r['checkpoint']}: "
             f"{r['variant']} {r['flavor']}"]
    if r.get("flavor_note"):
        lines.append(f"note: {r['flavor_note']}")
    w = {"counts": r["weights"], "rows": r["weights_rows"], "extras": r["weights_extras"]}
    lines.append("1. " + summary_line(w))
    prov = r.get("provenance")
    if prov and not prov["same"]:
        lines.append(f"   the file's metadata says it was converted from {prov['file_source']} (sha256 "
                     f"{prov['file_source_sha256'][:12]}...), not this checkpoint ({prov['checkpoint_sha256'][:12]}...)")
    if r.get("weights_effect"):
        e = r["weights_effect"]
        lines.append(f"   the file's weights in the official model vs the official weights (official eval of the images): "
                     f"rel logit change {e['rel_logit_change']:.3g}, top-1 changed on {e['top1_changed']}/{e['images']}")
    c = r["weights"]
    listed = [x for x in r["weights_rows"] if x["class"] in ("neither", "missing")
              or (x["class"] == "raw" and c["raw"] < c["ema"])]
    listed.sort(key=lambda x: -(x.get("rel_diff") or 0.0))
    for row in listed[:8]:
        extra = f"rel diff {row['rel_diff']:.3g}" if "rel_diff" in row else row.get("note", "")
        lines.append(f"     {row['class']:<8} {row['official']:<60} {row['key']} {extra}")
    if r["weights_extras"]:
        lines.append(f"     extra in the file: {', '.join(r['weights_extras'][:6])}"
                     + (" ..." if len(r["weights_extras"]) > 6 else ""))
    m = r["model"]
    if m.get("skipped"):
        lines.append(f"2. model: not run ({m['skipped']})")
    else:
        lines.append(f"2. model: {r['library']['model']} vs the TensorFlow reference ({m['reference_weights']} weights) "
                     f"at {m['resolution']} px on {len(m['images'])} image(s), stage by stage:")
        load = r["library"].get("load") or {}
        missing = [k for k in load.get("missing", []) if not k.endswith("num_batches_tracked")]
        for what, keys in (("did not get", missing), ("has no place for", load.get("unexpected", [])),
                           ("has other shapes than", load.get("mismatched", []))):
            if keys:
                lines.append(f"   note: the library's model {what} {len(keys)} of the file's tensors: "
                             f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        lines.append(f"     {'official stage (conv / batch norm in the first diverging one)':<64} {'library module':<32} "
                     f"{'rel error':>10} {'tolerance':>10}")
        fd = r.get("first_divergence")
        # every stage; inside the first diverging one its convs and batch norms too (as verify --trace)
        shown = [row for row in m["rows"] if row["kind"] in ("stage", "logits")
                 or (fd and row.get("stage") == fd["official"])]
        for row in shown:
            flag = "" if row["ok"] else "  <-- differs"
            name = row["official"] if row["kind"] in ("stage", "logits") else f"  {row['kind']} {row['official']}"
            lines.append(f"     {name[:64]:<64} {str(row['module'])[:32]:<32} {row['rel_error']:>10.3g} "
                         f"{row['tolerance']:>10.3g}{flag}")
        if fd:
            lines.append(f"   first divergence: {fd['official']}: {fd['kind']} {fd['layer']} (module {fd['module']}), "
                         f"rel error {fd['rel_error']:.3g} > {fd['tolerance']:.3g}")
        for d in r.get("diagnosis", []):
            lines.append(f"   diagnosis: {d['cause']}{' (confirmed)' if d['confirmed'] else ''}: {d['evidence']}")
    diffs = r["preprocessing"]
    figs = r.get("preprocessing_figures", {})
    if figs.get("skipped"):
        lines.append(f"3. preprocessing: not checked ({figs['skipped']})")
    else:
        dec = figs.get("declared", {})
        lines.append(f"3. preprocessing ({dec.get('source', '')}) vs the official eval of {r['flavor']}: "
                     f"{sum(d['counts'] for d in diffs)} difference(s)")
        for d in diffs:
            e = d.get("effect")
            eff = (f"rel logit change {e['rel_logit_change']:.3g}, top-1 changed on {e['top1_changed']}/{e['images']}"
                   if e else d.get("note", "not measured"))
            lines.append(f"     {'' if d['counts'] else '(implementation) '}{d['field']}: official {_short(d['official'])}, "
                         f"declared {_short(d['declared'])}{' (' + d['what'] + ')' if d.get('what') else ''}: {eff}")
        whole = figs.get("whole_pipeline")
        if whole:
            lines.append(f"     the library's whole pipeline vs the official one: rel logit change "
                         f"{whole['rel_logit_change']:.3g}, top-1 changed on {whole['top1_changed']}/{whole['images']}")
    ex = r["exact"]
    parts = [f"weights {'exact' if ex['weights'] else 'differ'}",
             "model not run" if ex["model"] is None else f"model {'exact' if ex['model'] else 'differs'}",
             "preprocessing not checked" if ex["preprocessing"] is None else
             f"preprocessing {'exact' if ex['preprocessing'] else 'differs'}"]
    lines.append(f"verdict: {r['verdict'].upper()} ({', '.join(parts)})")
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
