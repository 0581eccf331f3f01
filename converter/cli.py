"""``convert-effnet``: convert the official EfficientNet checkpoints to PyTorch."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import __version__
from .errors import ConversionError, first_line

log = logging.getLogger("converter")


USAGE = """
  convert-effnet --variant V [--flavor F] [--checkpoint PATH] [--output-dir DIR] [--verify] [options]
  convert-effnet --list | --all [--only NAME...]
  convert-effnet verify --weights FILE --checkpoint PATH [options]
  convert-effnet predict IMAGE|FOLDER... --weights FILE [options]
  convert-effnet evaluate DIR --weights FILE [options]
  convert-effnet export --weights FILE [--onnx OUT.onnx] [--torchscript OUT.pt] [--tf-checkpoint DIR]
      [--saved-model DIR] [--tflite OUT.tflite] [--tflite-int8 OUT.tflite --calibration-images IMG...|DIR] [options]
  convert-effnet audit --checkpoint CK --weights FILE [--layout L] [--images IMG...] [--json OUT]
(convert-effnet SUBCOMMAND --help for a subcommand's options)"""


SUBCOMMANDS = ("verify", "predict", "evaluate", "export", "audit")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (what is wrong, where the help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _convert_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="convert-effnet",
        usage=USAGE,
        description="Convert an official TensorFlow EfficientNet checkpoint into PyTorch weights.",
        epilog="Subcommands: convert-effnet verify --weights FILE --checkpoint PATH; "
               "convert-effnet predict IMAGE... --weights FILE; convert-effnet evaluate DIR --weights FILE; "
               "convert-effnet export --weights FILE --onnx OUT.onnx [--torchscript OUT.pt]. "
               "Without --checkpoint the official tarball is downloaded into $EFFNET_CACHE "
               "(default ~/.cache/effnet-convert).")
    from .registry import variants_help

    p.add_argument("--variant", help=f"{variants_help()}; see --list")
    p.add_argument("--flavor", help="standard, aa, advprop, noisystudent, randaug; EfficientNetV2: 1k, 21k, 21k-ft1k; "
                                    "or a zoo model name / an official name (efficientnetv2-s-21k-ft1k)")
    p.add_argument("--checkpoint", help="checkpoint prefix, a folder holding model.ckpt*, the official .tar.gz, "
                                        "or a keras.applications EfficientNet .h5 / .weights.h5")
    p.add_argument("--output-dir", default=".", help="where to write (default: current folder)")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "pth", "both"),
                   help="safetensors (default), pth (a plain state_dict) or both")
    from .mapping import layouts

    # the layouts the table files in mappings/ declare; a value not among them is refused by
    # mapping.get_layout in one line (argparse's choices= would print its usage too)
    known = layouts()
    p.add_argument("--layout", default="native", metavar="{" + ",".join(known) + "}",
                   help="state_dict keys of the output: " + ", ".join(
                       f"{name} ({'default, ' if name == 'native' else ''}{lay.summary})" for name, lay in known.items()))
    p.add_argument("--no-ema", action="store_true", help="take the raw weights instead of their EMA twins")
    p.add_argument("--num-classes", type=int,
                   help="classes of the converted classifier; must agree with the checkpoint (default: read from it)")
    bg = p.add_mutually_exclusive_group()
    bg.add_argument("--drop-background", action="store_true", default=None,
                    help="1001-class checkpoints: drop the background class (index 0) for ImageNet's 1000 "
                         "(default for --layout timm/mmpretrain, whose models have 1000 classes)")
    bg.add_argument("--keep-background", dest="drop_background", action="store_false",
                    help="1001-class checkpoints: keep all 1001 outputs (default for --layout native)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert even if weights hold NaN/inf")
    p.add_argument("--sha256", help="expected sha256 of the tarball (downloaded or --checkpoint) or .h5")
    p.add_argument("--fused-stride", choices=("expand", "project"), default=None,
                   help="EdgeTPU fused blocks: which conv carries the stride. expand (default): the kxk expand conv, "
                        "as the official code since tensorflow/tpu 32572cb (2020-12-27) and timm/mmpretrain; "
                        "project: the 1x1 project conv, the 2019 code (631fb4c). Stored in the metadata")
    p.add_argument("--reader", choices=("bundle", "tf"),
                   help="checkpoint reader: bundle (default, no TensorFlow) or tf (TensorFlow's own)")
    p.add_argument("--list", action="store_true", help="list the official checkpoints and exit")
    p.add_argument("--all", action="store_true",
                   help="convert and verify every zoo checkpoint into --output-dir (skips the ones done and verified)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="with --all: only these checkpoints (names as --list prints them, shell patterns allowed)")
    p.add_argument("--verify", action="store_true",
                   help="after converting, run TensorFlow on the checkpoint and PyTorch on the output and compare logits")
    _verify_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks (the exit status stays the same)")
    p.add_argument("--version", action="version", version=f"effnet-convert {__version__}")
    return p


def _verify_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification")
    g.add_argument("--images", nargs="+", default=(), metavar="IMAGE",
                   help="your own images, added to the synthetic set (official eval preprocessing)")
    g.add_argument("--num-images", type=int, default=None,
                   help="synthetic images (default 8; none with --images unless given)")
    g.add_argument("--resolution", type=int, help="input size (default: the model's native resolution); "
                   "with --layout transformers also the size the folder's config is padded for")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where both frameworks run (auto: the GPU when there is one)")
    g.add_argument("--dump-logits", metavar="FILE.npz", help="save both logit arrays (keys tf, torch)")
    g.add_argument("--dtype", default="float32", choices=("float32", "bf16", "fp16"),
                   help="also run the converted model in bf16/fp16 (autocast) and report its deviation from the "
                        "official float32 logits and its top-1 agreement (the verdict stays float32's)")
    g.add_argument("--max-rel-error", type=float, default=None, help=argparse.SUPPRESS)
    g.add_argument("--trace", action="store_true",
                   help="also compare every stage (stem, blocks, convs, batch norms, head) on the first 2 images "
                        "and name the first layer that diverges (table printed and in the JSON report)")


def _verify_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="convert-effnet verify",
        description="Check a converted file against its TensorFlow checkpoint (variant and flavor from its metadata).")
    p.add_argument("--weights", required=True, help="the converted .safetensors or .pth")
    p.add_argument("--checkpoint", required=True, help="checkpoint prefix, folder or .tar.gz it was converted from")
    _verify_options(p)
    p.add_argument("--quiet", action="store_true", help="no stage lines on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run_verify(weights: Path, prefix: str, args: argparse.Namespace) -> int:
    """Verify ``weights`` against ``prefix``; print the summary; 0 when it passes, 3 when not."""
    from .verify import report_path_for, verify_file

    report = verify_file(weights, prefix, progress=not getattr(args, "quiet", False), **_verify_kwargs(args))
    print(report.summary())
    print(f"report: {report_path_for(weights)}")
    if not report.passed:
        print(f"convert-effnet: verification failed: {'; '.join(report.failures)}", file=sys.stderr)
        return 3
    return 0


def _verify_kwargs(args: argparse.Namespace) -> dict:
    """The verification options of ``args`` as keyword arguments of verify.plan_verification."""
    from .verify import MAX_REL_ERROR

    return dict(resolution=args.resolution, n_images=args.num_images, image_files=list(args.images),
                device=args.device, dump_logits=Path(args.dump_logits) if args.dump_logits else None,
                max_rel_error=MAX_REL_ERROR if args.max_rel_error is None else args.max_rel_error,
                trace=bool(getattr(args, "trace", False)), dtype=getattr(args, "dtype", "float32"))


def _drop_report(outputs: Sequence[Path]) -> None:
    """Remove the verification report of ``outputs`` before they are replaced: it describes other bytes."""
    from .verify import report_path_for

    report = report_path_for(outputs[0])
    if report.is_file():
        report.unlink()
        log.info("removed %s (it verified the file being replaced)", report)


def _finish(result, label: str, prefix: Optional[str], plan, args: argparse.Namespace,
            finals: Optional[Sequence[Path]] = None) -> int:
    """Give the converted files their names; with ``plan`` (--verify) only after the check passed.

    Passed: the outputs, then their report, get their final names. Failed: every file of the
    attempt ends in ``.failed`` (``NAME.safetensors.failed``, ``NAME.verify.json.failed``); what
    the final names held stays. Error or Ctrl-C: the temp files go, the final names are untouched.
    """
    from .verify import checked_report, report_path_for, write_report
    from .writer import publish

    pending = result.pending
    what = (f"({label}, {'EMA' if result.selection.ema else 'raw'} weights, "
            f"{result.metadata['num_classes']} classes, {result.seconds:.1f} s)")
    try:
        if plan is None:
            if pending:
                _drop_report(result.outputs)
            publish(pending, replace=args.force)  # a name another run took meanwhile: refused, not replaced
            for p in result.outputs:
                print(f"wrote {p} {what}")
            return 0
        if not pending:  # a folder (--layout transformers), committed by its writer under a hidden name
            return _finish_folder(Path(result.outputs[0]), Path((finals or result.outputs)[0]), prefix, plan, args,
                                  what)
        report = checked_report(pending[0].tmp, prefix, record_as=result.outputs[0], plan=plan,
                                progress=not args.quiet)
        print(report.summary())
        final_report = report_path_for(result.outputs[0])
        if report.passed:
            rf = write_report(report, final_report, commit=False)
            try:
                publish(pending, replace=args.force)
                rf.commit()
            finally:
                rf.discard()
            _remove_failed(result.outputs, final_report)
            for p in result.outputs:
                print(f"wrote {p} {what}")
            print(f"report: {final_report}")
            return 0
        failed = [p.with_name(p.name + ".failed") for p in result.outputs]
        report.weights = str(failed[0])
        for f, to in zip(pending, failed):
            f.commit(to=to)
        failed_report = final_report.with_name(final_report.name + ".failed")
        write_report(report, failed_report)
        print(f"report: {failed_report}")
        print(f"convert-effnet: verification failed: {'; '.join(report.failures)}; the outputs are named "
              f"{', '.join(str(p) for p in failed)}", file=sys.stderr)
        return 3
    finally:
        for f in pending:
            f.discard()


def _remove_failed(outputs: Sequence[Path], report: Path) -> None:
    """Remove the ``.failed`` files an earlier failed verification left beside ``outputs`` (now verified)."""
    for p in list(outputs) + [report]:
        stale = Path(p).with_name(Path(p).name + ".failed")
        if stale.is_file():
            stale.unlink()
            log.info("removed %s (an earlier failed verification; %s now verified)", stale, Path(outputs[0]).name)


def _finish_folder(staged: Path, final: Path, prefix: Optional[str], plan, args: argparse.Namespace,
                   what: str) -> int:
    """_finish for a folder output: verified at ``staged``, then renamed to ``final`` (or ``final.failed``)."""
    import shutil

    from . import interrupts
    from .mapping import get_layout
    from .verify import checked_report, report_path_for, write_report

    writer = get_layout(args.layout).folder_writer()

    try:
        report = checked_report(staged, prefix, record_as=final, plan=plan, progress=not args.quiet)
        print(report.summary())
        if report.passed:
            write_report(report, report_path_for(staged))
            writer.add_verification(staged, report)
            interrupts.check()
            writer.commit_folder(staged, final)
            stale = final.with_name(final.name + ".failed")  # an earlier failed attempt's folder
            if stale.is_dir():
                shutil.rmtree(stale)
                log.info("removed %s (an earlier failed verification; %s now verified)", stale, final.name)
            print(f"wrote {final} {what}")
            print(f"report: {report_path_for(final)}")
            return 0
        failed = final.with_name(final.name + ".failed")
        report.weights = str(failed)
        write_report(report, report_path_for(staged))
        if failed.is_dir():
            shutil.rmtree(failed)
        os.rename(staged, failed)
        print(f"report: {report_path_for(failed)}")
        print(f"convert-effnet: verification failed: {'; '.join(report.failures)}; the output is named {failed}",
              file=sys.stderr)
        return 3
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def list_checkpoints(out=None) -> None:
    """Print the registry: names (both accepted by --flavor), parameters, FLOPs, resolution, top-1, URL."""
    from .registry import list_lines

    out = out or sys.stdout
    for line in list_lines():  # every family's checkpoints (registry.all_checkpoints)
        out.write(line + "\n")


def _flavor_names_checkpoint(flavor) -> bool:
    """Whether --flavor alone names a checkpoint (an official file name such as ``mnasnet-a1-140``)."""
    from .registry import find_checkpoint

    if not flavor:
        return False
    try:
        find_checkpoint(None, flavor)
    except ConversionError:
        return False
    return True


def infer_variant(reader) -> str:
    """The variant named by the checkpoint's scope (``efficientnet-b3`` -> ``b3``)."""
    from .registry import get_arch, variant_names
    from .convert import checkpoint_scopes

    scopes = checkpoint_scopes(reader)
    if len(scopes) != 1:
        raise ConversionError(f"cannot infer the variant: the checkpoint has scopes {scopes}; pass --variant")
    matches = [v for v in variant_names() if get_arch(v).scope == scopes[0]]
    if not matches:
        raise ConversionError(f"the checkpoint's scope {scopes[0]} is no known EfficientNet; pass --variant")
    if len(matches) > 1:
        raise ConversionError(f"the checkpoint's scope {scopes[0]} fits --variant {' and '.join(matches)} "
                              "(different resolutions): pass one")
    return matches[0]


def _refuse_keras_options(args) -> None:
    """Options that do not apply to a keras.applications .h5 (``--checkpoint FILE.h5``): one line each."""
    if args.verify:
        raise ConversionError("--verify compares against a TensorFlow checkpoint; a Keras .h5 has none "
                              "(convert without --verify; tests/test_keras.py checks the port against Keras's own logits)")
    _refuse_verify_options(args)
    if args.flavor:
        raise ConversionError("--flavor does not apply to a Keras .h5: its preprocessing is read from the "
                              "file's Normalization layer; leave --flavor out")
    if getattr(args, "fused_stride", None):
        raise ConversionError("--fused-stride applies to EdgeTPU checkpoints; Keras EfficientNets have no fused blocks")


def _keras_cfg(spec, reader) -> Dict[str, object]:
    """The metadata of a Keras .h5's conversion: its preprocessing is the file's (Normalization layer)."""
    from .checkpoint import official_crop

    cfg: Dict[str, object] = {
        "variant": spec.name,
        "flavor": "keras",
        "input_size": [3, spec.resolution, spec.resolution],  # keras EfficientNetBn default_size
        "crop_pct": official_crop(spec.resolution),  # the official eval crop
        "interpolation": "bicubic",
    }
    cfg.update(reader.preprocessing())
    cfg.update(keras_format=reader.format)
    return cfg


def _checkpoint_classes(reader, spec, args, ckpt=None) -> Tuple[int, Optional[bool]]:
    """(classes of the checkpoint's classifier, whether to drop its background class), checked
    against --num-classes / --drop-background and the release ``ckpt`` (``args`` is not changed)."""
    from .convert import checkpoint_num_classes

    n = checkpoint_num_classes(reader, spec)
    if ckpt is not None:
        _check_flavor_classes(ckpt, n)  # before anything is written
    drop = args.drop_background
    if n is None:  # no classifier found: the totality check reports it
        return args.num_classes or spec.num_classes, drop
    if drop is None:  # neither flag: the library layouts drop it, native keeps it
        drop = n == 1001 and args.layout != "native" and args.num_classes != n
        if drop:
            from .mapping import library_model

            log.warning("note: %s's %s has ImageNet's 1000 classes: the checkpoint's background class (output 0) "
                        "is dropped; --keep-background keeps all 1001", args.layout, library_model(spec, args.layout))
    out = n - 1 if drop else n
    if args.num_classes is not None and args.num_classes != out:
        extra = " after --drop-background" if drop else ""
        raise ConversionError(f"--num-classes {args.num_classes} but the checkpoint's classifier has {out} classes{extra}")
    if n != (ckpt.arch if ckpt is not None else spec).num_classes:
        log.info("the checkpoint's classifier has %d classes", n)
    return n, drop


def _refuse_verify_options(args: argparse.Namespace) -> None:
    """Verification options without --verify would be ignored: refuse them in one line."""
    if args.verify:
        return
    from .mapping import get_layout

    try:
        folder = get_layout(args.layout).file_form == "folder"
    except ConversionError:  # an unknown layout: refused by check_variant in its turn
        folder = False
    given = [flag for flag, on in (
        ("--images", bool(args.images)),
        ("--resolution", args.resolution is not None and not folder),  # a folder's config is padded for it
        ("--dump-logits", bool(args.dump_logits)),
        ("--device", args.device != "auto"),
        ("--max-rel-error", args.max_rel_error is not None),
        ("--trace", bool(getattr(args, "trace", False)))) if on]
    if len(given) == 1:
        raise ConversionError(f"{given[0]} is a verification option; add --verify (or leave it out)")
    if given:
        raise ConversionError(f"{', '.join(given)} are verification options; add --verify (or leave them out)")


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    for p in paths:
        if p.exists() and not force:
            raise ConversionError(f"{p} exists; pass --force to overwrite it")


def _check_flavor_classes(ckpt, classes: Optional[int]) -> None:
    """Refuse a checkpoint whose classifier fits another release of its variant, not ``ckpt``
    (``--flavor 1k`` on a 21843-class V2 head): its metadata would name the wrong preprocessing.

    A count that no release of the variant has (a fine-tuned head) is converted as before.
    """
    from .registry import all_checkpoints

    own = ckpt.arch.num_classes
    if classes is None or classes == own:
        return
    fits = [c for c in all_checkpoints() if c.variant == ckpt.variant and c.arch.num_classes == classes]
    if fits:
        raise ConversionError(
            f"the checkpoint's classifier has {classes} classes but {ckpt.name} has {own}: it is "
            f"{' or '.join(c.name for c in fits)}; pass --flavor {' or --flavor '.join(c.flavor for c in fits)}")


def run_convert(args: argparse.Namespace) -> int:
    """Convert one checkpoint; its output names stay claimed for the whole run (writer.claimed)."""
    import contextlib

    with contextlib.ExitStack() as claims:
        return _run_convert(args, claims)


def _opened(claims, source):
    """``source``, closed when the run ends (its reader; an extracted tarball's folder is removed)."""
    claims.callback(source.close)
    return source


def _run_convert(args: argparse.Namespace, claims) -> int:
    from . import sources
    from .registry import get_arch
    from .convert import convert, output_paths
    from .registry import find_checkpoint

    if not args.variant and not args.flavor and not args.checkpoint:
        raise ConversionError("--variant is required (e.g. convert-effnet --variant b4 --flavor advprop); see --list")
    kind = sources.classify(args.checkpoint) if args.checkpoint else "download"  # classified once
    source = ckpt = None
    need_files = bool(args.verify)  # TensorFlow verifies from files: a tarball is extracted then
    if kind == "keras":  # a keras.applications EfficientNet .h5 / .weights.h5: no release, its own metadata
        _refuse_keras_options(args)
        source = _opened(claims, sources.Source.open(args.checkpoint, kind=kind, sha256=args.sha256,
                                                          variant=args.variant))
        spec = source.reader.spec
        from .sources.keras import output_stem as keras_stem

        name, label = keras_stem(spec), f"Keras EfficientNet{spec.name.upper()}"
    else:
        if args.verify:  # before any download or conversion
            from .verify import require_tensorflow

            require_tensorflow()
        _refuse_verify_options(args)
        variant = args.variant
        if args.checkpoint and not variant and not _flavor_names_checkpoint(args.flavor):
            source = _opened(claims, sources.Source.open(args.checkpoint, need_files, args.reader, kind,
                                                              sha256=args.sha256))
            variant = infer_variant(source.reader)
            log.info("variant %s (from the checkpoint's scope)", variant)
        if args.checkpoint and not args.flavor:
            ckpt = find_checkpoint(variant, None)  # works only where a variant has one checkpoint
        else:
            ckpt = find_checkpoint(variant, args.flavor)
        spec = get_arch(ckpt.variant)
        name = label = ckpt.name
    if args.fused_stride is not None:  # EdgeTPU's fused blocks (arch.FUSED_STRIDES)
        if not spec.has_strided_fused:
            raise ConversionError(f"--fused-stride applies to models with strided fused blocks (edgetpu-s/m/l); "
                                  f"{spec.name} has none")
        spec = spec.with_fused_stride(args.fused_stride)
    from .mapping import check_variant, get_layout, output_stem

    check_variant(spec, args.layout)  # an unknown layout, or a variant its library lacks: before any download
    layout = get_layout(args.layout, spec)
    folder = layout.file_form == "folder"
    if folder:  # written by the layout's own writer (transformers: a from_pretrained folder, padded for --resolution)
        write, paths = layout.folder_writer().folder_converter(convert, args.resolution)
    else:
        write, paths = convert, output_paths
    fmt_paths = paths(Path(args.output_dir), output_stem(name, args.layout), args.format)
    from .writer import check_writable_folder, claimed

    _refuse_existing(fmt_paths, args.force)  # say so before downloading gigabytes
    check_writable_folder(Path(args.output_dir))  # a read-only folder: before any download
    # a second run into these names is refused until this one ends (its outputs are not replaced)
    claims.enter_context(claimed(fmt_paths, force=args.force))
    _refuse_existing(fmt_paths, args.force)  # a run that finished just before our claim
    plan = None
    if args.verify:  # every verification option checked, --images decoded: before anything is written
        from .verify import plan_verification

        plan = plan_verification(ckpt.pretrained_cfg(), progress=not args.quiet, **_verify_kwargs(args))

    if source is None and args.checkpoint:
        source = _opened(claims, sources.Source.open(args.checkpoint, need_files, args.reader, kind,
                                                          sha256=args.sha256))
    elif source is None:
        tarball = sources.fetch_checkpoint(ckpt, sha256=args.sha256, progress=not args.quiet)
        source = _opened(claims, sources.Source.open(tarball, need_files, args.reader, "download",
                                                          origin=ckpt.download_url()))
    reader, prefix = source.reader, source.prefix

    classes, drop_background = _checkpoint_classes(reader, spec, args, ckpt)
    spec = spec.with_classes(classes)
    cfg = ckpt.pretrained_cfg() if ckpt is not None else _keras_cfg(spec, reader)
    cfg.update(source=source.origin, source_sha256=source.sha256)
    # files stay under their temp names until _finish names them (after the check, with --verify);
    # a folder output (--layout transformers) is committed by its own writer: with --verify, under a
    # hidden name that _finish gives its final name after the check
    staged = {} if folder else {"commit": False}
    targets = fmt_paths
    if folder and plan is not None:
        import secrets

        targets = [p.with_name(f".{p.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}") for p in fmt_paths]
    result = write(reader, spec, cfg, targets, layout=args.layout,
                   use_ema=not args.no_ema and ckpt is not None,  # a Keras file has no EMA twins
                   force=args.force, allow_nonfinite=args.allow_nonfinite, progress=not args.quiet,
                   drop_background=drop_background, **staged)
    return _finish(result, label, prefix, plan, args, finals=fmt_paths)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``convert-effnet``; returns the exit status.

    Every error is one line and a non-zero exit (``--debug``: the traceback too, same exit
    status); Ctrl-C: "interrupted", 130; a closed stdout (``| head``): quietly 141, as SIGPIPE.
    """
    from . import interrupts

    argv = list(sys.argv[1:] if argv is None else argv)
    # our own lines at INFO; other libraries' at WARNING: torch's atexit "FakeTensor cache stats" (INFO)
    # reaches stderr when Ctrl-C stops torch's import before it sets its own loggers' levels
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    log.setLevel(logging.INFO)
    with interrupts.installed():
        try:
            rc = _dispatch(argv)
            sys.stdout.flush()  # a reader gone (| head) shows here, not as a message at exit
            interrupts.check()  # Ctrl-C swallowed by a library: still an interrupted run
            return rc
        except BaseException as e:  # noqa: B902 - every way out gets its exit status here
            return _failed(e, debug="--debug" in argv)


def _dispatch(argv: List[str]) -> int:
    if argv and argv[0] in ("predict", "evaluate"):
        from . import predict

        return predict.main(argv)
    if argv and argv[0] == "export":
        from . import export

        return export.main(argv[1:])
    if argv and argv[0] == "audit":  # converter/audit/: is a port exact, and if not, why
        from . import audit

        return audit.main(argv[1:])
    if argv and argv[0] == "verify":
        from . import sources

        args = _verify_parser().parse_args(argv[1:])
        with sources.checkpoint_files(args.checkpoint) as prefix:  # a tarball: extracted for the run
            return run_verify(Path(args.weights), prefix, args)
    if argv and not argv[0].startswith("-"):  # a word where a subcommand or an option goes
        raise ConversionError(f"unknown subcommand {argv[0]!r}; the subcommands are {', '.join(SUBCOMMANDS)} "
                              "(convert-effnet --help)")
    args = _convert_parser().parse_args(argv)
    if args.list:
        list_checkpoints()
        return 0
    if args.all and args.fused_stride:
        raise ConversionError("--all converts with the default --fused-stride; convert one EdgeTPU checkpoint "
                              "at a time for --fused-stride project")
    if args.all and args.layout != "native":
        raise ConversionError("--all writes the native layout; convert one checkpoint at a time for --layout "
                              f"{args.layout}")
    if args.all:
        from .batch import run_all

        return run_all(args)
    if args.only:
        raise ConversionError("--only selects checkpoints for --all; add --all")
    from . import sources

    return sources.rerun_if_corrupt_download(run_convert, args)  # a damaged cached download: once more


def _stdout_gone() -> None:
    """stdout's reader closed the pipe: send what is left to /dev/null (no error at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _os_error_line(e: OSError) -> str:
    """An OSError in one line; a hidden temp file (``.NAME.tmp-...``) is named by its folder."""
    name = e.filename
    from .errors import disk_full, is_disk_full

    if name and is_disk_full(e):  # no room (committing, a report): the same line as while converting
        return str(disk_full(Path(str(name)).parent))
    if name and re.fullmatch(r"\..+\.tmp-\d+(?:-[0-9a-f]+)?(?:\.\w+)?", Path(str(name)).name):
        from .writer import folder_error

        return folder_error(Path(str(name)).parent, e)
    return f"{e.strerror or e}: {name or ''}".rstrip(": ")


def _failed(e: BaseException, debug: bool) -> int:
    """Print the one line for ``e`` (the traceback first with --debug); return the exit status."""
    from . import interrupts

    if isinstance(e, SystemExit):  # argparse: usage errors (2), --help/--version (0)
        raise e
    if isinstance(e, BrokenPipeError):
        _stdout_gone()
        return 141  # 128 + SIGPIPE, what a shell shows for a writer stopped by a closed pipe
    if isinstance(e, KeyboardInterrupt) or interrupts.interrupted():
        line, code = "interrupted", 130
    elif isinstance(e, ConversionError):
        line, code = f"error: {e}", getattr(e, "exit_code", 2)
    elif isinstance(e, OSError):
        line, code = f"error: {_os_error_line(e)}", 2
    elif isinstance(e, Exception):  # a bug, not bad input: still one line unless --debug
        first = first_line(e)
        line, code = f"internal error: {type(e).__name__}: {first} (rerun with --debug for a traceback)", 1
    else:
        raise e
    if debug and code != 130:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    try:
        print(f"convert-effnet: {line}", file=sys.stderr)
    except OSError:
        pass
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
