"""``convert-effnet``: convert the official EfficientNet checkpoints to PyTorch."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__
from .errors import ConversionError

log = logging.getLogger("converter")


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-effnet",
        description="Convert an official TensorFlow EfficientNet checkpoint into PyTorch weights.",
        epilog="Subcommands: convert-effnet verify --weights FILE --checkpoint PATH; "
               "convert-effnet predict IMAGE... --weights FILE; convert-effnet evaluate DIR --weights FILE; "
               "convert-effnet export --weights FILE --onnx OUT.onnx [--torchscript OUT.pt]. "
               "Without --checkpoint the official tarball is downloaded into $EFFNET_CACHE "
               "(default ~/.cache/effnet-convert).")
    p.add_argument("--variant", help="b0..b8, l2, l2-475, lite0..lite4, edgetpu-s/m/l, condconv-b0-4e/-8e/-8e-depth")
    p.add_argument("--flavor", help="standard, aa, advprop, noisystudent, randaug, or a zoo model name")
    p.add_argument("--checkpoint", help="checkpoint prefix, a folder holding model.ckpt*, or the official .tar.gz")
    p.add_argument("--output-dir", default=".", help="where to write (default: current folder)")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "pth", "both"))
    p.add_argument("--layout", default="native",
                   help="state_dict keys of the output: native (default, converter.load_model), "
                        "timm (tf_efficientnet_*, the family too: lite*, es/em/el, cc_*), "
                        "mmpretrain (its EfficientNet: b0-b8, l2, EdgeTPU es/em)")
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
    p.add_argument("--sha256", help="expected sha256 of the downloaded tarball")
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"effnet-convert {__version__}")
    return p


def _verify_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification")
    g.add_argument("--images", nargs="+", default=(), metavar="IMAGE",
                   help="your own images, added to the synthetic set (official eval preprocessing)")
    g.add_argument("--num-images", type=int, default=8, help="synthetic images (default 8)")
    g.add_argument("--resolution", type=int, help="input size (default: the model's native resolution)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where both frameworks run (auto: the GPU when there is one)")
    g.add_argument("--dump-logits", metavar="FILE.npz", help="save both logit arrays (keys tf, torch)")
    g.add_argument("--max-rel-error", type=float, default=None, help=argparse.SUPPRESS)


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-effnet verify",
        description="Check a converted file against its TensorFlow checkpoint (variant and flavor from its metadata).")
    p.add_argument("--weights", required=True, help="the converted .safetensors or .pth")
    p.add_argument("--checkpoint", required=True, help="checkpoint prefix, folder or .tar.gz it was converted from")
    _verify_options(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run_verify(weights: Path, prefix: str, args: argparse.Namespace) -> int:
    """Verify ``weights`` against ``prefix``; print the summary; 0 when it passes, 3 when not."""
    from .verify import MAX_REL_ERROR, report_path_for, verify_file

    report = verify_file(weights, prefix, resolution=args.resolution, n_images=args.num_images,
                         image_files=list(args.images), device=args.device,
                         dump_logits=Path(args.dump_logits) if args.dump_logits else None,
                         max_rel_error=args.max_rel_error or MAX_REL_ERROR)
    print(report.summary())
    print(f"report: {report_path_for(weights)}")
    if not report.passed:
        print(f"convert-effnet: verification failed: {'; '.join(report.failures)}", file=sys.stderr)
        return 3
    return 0


def list_checkpoints(out=None) -> None:
    """Print the registry: name, parameters, FLOPs, resolution, published top-1, URL."""
    from .arch import count_macs, count_params
    from .zoo import CHECKPOINTS

    out = out or sys.stdout
    rows = [("name", "params(M)", "GFLOPs", "res", "top1", "url")]
    for c in CHECKPOINTS:
        rows.append((c.name, f"{count_params(c.arch) / 1e6:.2f}", f"{count_macs(c.arch) / 1e9:.2f}",
                     str(c.resolution), f"{c.top1:.2f}", c.url))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    out.write("GFLOPs: multiply-adds of one image at the native resolution, computed from the architecture.\n")


def _hash_checkpoint_files(prefix: str):
    """sha256 over the .index file then each .data shard, in order: computed beside the conversion."""
    from .pipeline import Deferred, sha256_files

    files = [Path(prefix + ".index")] + sorted(Path(prefix).parent.glob(Path(prefix).name + ".data-*"))
    return Deferred.run(sha256_files, files)


def infer_variant(reader) -> str:
    """The variant named by the checkpoint's scope (``efficientnet-b3`` -> ``b3``)."""
    from .arch import ARCHS
    from .convert import checkpoint_scopes

    scopes = checkpoint_scopes(reader)
    if len(scopes) != 1:
        raise ConversionError(f"cannot infer the variant: the checkpoint has scopes {scopes}; pass --variant")
    matches = [a.name for a in ARCHS.values() if a.scope == scopes[0]]
    if not matches:
        raise ConversionError(f"the checkpoint's scope {scopes[0]} is no known EfficientNet; pass --variant")
    if len(matches) > 1:
        raise ConversionError(f"the checkpoint's scope {scopes[0]} fits --variant {' and '.join(matches)} "
                              "(different resolutions): pass one")
    return matches[0]


def _checkpoint_classes(reader, spec, args) -> int:
    """Classes of the checkpoint's classifier, checked against --num-classes / --drop-background."""
    from .convert import checkpoint_num_classes

    n = checkpoint_num_classes(reader, spec)
    if n is None:  # no classifier found: the totality check reports it
        return args.num_classes or spec.num_classes
    if args.drop_background is None:  # neither flag: the library layouts drop it, native keeps it
        args.drop_background = n == 1001 and args.layout != "native" and args.num_classes != n
        if args.drop_background:
            from .mapping import library_model

            log.warning("note: %s's %s has ImageNet's 1000 classes: the checkpoint's background class (output 0) "
                        "is dropped; --keep-background keeps all 1001", args.layout, library_model(spec, args.layout))
    out = n - 1 if args.drop_background else n
    if args.num_classes is not None and args.num_classes != out:
        extra = " after --drop-background" if args.drop_background else ""
        raise ConversionError(f"--num-classes {args.num_classes} but the checkpoint's classifier has {out} classes{extra}")
    if n != spec.num_classes:
        log.info("the checkpoint's classifier has %d classes", n)
    return n


def _open_source(path: str, args: argparse.Namespace):
    """(reader, prefix) for --checkpoint: a tarball is read as a stream, without extracting it,
    unless the TensorFlow side needs files (--verify, --reader tf); ``prefix`` is None then."""
    from . import sources
    from .readers import READER_ENV, open_reader

    p = Path(path).expanduser()
    kind = (args.reader or os.environ.get(READER_ENV) or "bundle").lower()
    if p.is_file() and sources.is_tarball(p) and not args.verify and kind == "bundle":
        from .tarball import TarballReader

        return TarballReader(p), None
    prefix = sources.resolve_checkpoint(path)
    return open_reader(prefix, args.reader), prefix


def run_convert(args: argparse.Namespace) -> int:
    from . import sources
    from .arch import get_arch
    from .convert import convert, output_paths
    from .pipeline import Deferred
    from .zoo import find_checkpoint

    if not args.variant and not args.flavor and not args.checkpoint:
        raise ConversionError("--variant is required (e.g. convert-effnet --variant b4 --flavor advprop); see --list")
    if args.checkpoint:
        from .keras import is_keras_file, run_convert_keras

        if is_keras_file(args.checkpoint):  # a keras.applications EfficientNet .h5 / .weights.h5
            return run_convert_keras(args)
    if args.verify:  # before any download or conversion
        from .verify import require_tensorflow

        require_tensorflow()
    reader = prefix = None
    if args.checkpoint and not args.variant:
        reader, prefix = _open_source(args.checkpoint, args)
        args.variant = infer_variant(reader)
        log.info("variant %s (from the checkpoint's scope)", args.variant)
    if args.checkpoint and not args.flavor:
        ckpt = find_checkpoint(args.variant, None)  # works only where a variant has one checkpoint
    else:
        ckpt = find_checkpoint(args.variant, args.flavor)
    spec = get_arch(ckpt.variant)
    from .mapping import check_variant, output_stem

    check_variant(spec, args.layout)  # an unknown layout, or a variant its library lacks: before any download
    fmt_paths = output_paths(Path(args.output_dir), output_stem(ckpt.name, args.layout), args.format)
    for p in fmt_paths:  # say so before downloading gigabytes
        if p.exists() and not args.force:
            raise ConversionError(f"{p} exists; pass --force to overwrite it")

    if args.checkpoint:
        src = Path(args.checkpoint)
        source = str(src.resolve()) if src.exists() else args.checkpoint
        if reader is None:
            reader, prefix = _open_source(args.checkpoint, args)
        if src.is_file() and sources.is_tarball(src):
            source_sha = Deferred.run(sources.sha256_file, src)  # memoized: free when extraction hashed it
        else:
            source_sha = _hash_checkpoint_files(prefix)
    else:
        tarball = sources.fetch_checkpoint(ckpt, sha256=args.sha256, progress=not args.quiet)
        source = ckpt.download_url()
        source_sha = Deferred.run(sources.sha256_file, tarball)
        reader, prefix = _open_source(str(tarball), args)

    spec = spec.with_classes(_checkpoint_classes(reader, spec, args))
    cfg = ckpt.pretrained_cfg()
    cfg.update(source=source, source_sha256=source_sha)
    result = convert(reader, spec, cfg, fmt_paths, layout=args.layout, use_ema=not args.no_ema, force=args.force,
                     allow_nonfinite=args.allow_nonfinite, progress=not args.quiet,
                     drop_background=args.drop_background)
    weights = "EMA" if result.selection.ema else "raw"
    classes = result.metadata["num_classes"]
    for p in result.outputs:
        print(f"wrote {p} ({ckpt.name}, {weights} weights, {classes} classes, {result.seconds:.1f} s)")
    if args.verify:
        rc = run_verify(result.outputs[0], prefix, args)
        if rc != 0:  # never leave a file that failed its check under the name of a good one
            for p in result.outputs:
                os.replace(p, p.with_name(p.name + ".failed"))
            print(f"convert-effnet: the outputs were renamed to *.failed", file=sys.stderr)
        return rc
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``convert-effnet``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    try:
        if argv and argv[0] in ("predict", "evaluate"):
            from . import predict

            return predict.main(argv)
        if argv and argv[0] == "export":
            from . import export

            return export.main(argv[1:])
        if argv and argv[0] == "verify":
            from . import sources

            args = _verify_parser().parse_args(argv[1:])
            return run_verify(Path(args.weights), sources.resolve_checkpoint(args.checkpoint), args)
        args = _convert_parser().parse_args(argv)
        if args.list:
            list_checkpoints()
            return 0
        if args.all and args.layout != "native":
            raise ConversionError("--all writes the native layout; convert one checkpoint at a time for --layout "
                                  f"{args.layout}")
        if args.all:
            from .batch import run_all

            return run_all(args)
        if args.only:
            raise ConversionError("--only selects checkpoints for --all; add --all")
        return run_convert(args)
    except ConversionError as e:
        if debug:
            raise
        print(f"convert-effnet: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("convert-effnet: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        print(f"convert-effnet: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"convert-effnet: internal error: {type(e).__name__}: {first} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
