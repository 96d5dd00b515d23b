"""The ``edgesdk`` command: convert, verify, inspect, demo.

Exit codes: 0 success, 1 a bundle failed its parity thresholds, 2 bad input or a failure
with a message naming the problem and the fix, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .errors import EdgeSDKError
from .parity import Thresholds, default_thresholds

__all__ = ["main"]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _thresholds(args: argparse.Namespace, precision: str) -> Thresholds | None:
    if args.max_abs_diff is None and args.min_agreement is None:
        return None
    base = default_thresholds(precision)
    return Thresholds(
        max_abs_diff=args.max_abs_diff if args.max_abs_diff is not None else base.max_abs_diff,
        min_agreement=args.min_agreement if args.min_agreement is not None else base.min_agreement,
        max_accuracy_drop=base.max_accuracy_drop,
    )


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-abs-diff", type=float, help="largest allowed |logit difference| (fp32 default 1e-4)")
    p.add_argument("--min-agreement", type=float, help="smallest allowed top-1 agreement, 0-1 (default 0.99)")


def _print_records(records) -> None:
    for r in records:
        print(f"{r.name:<16} {r.status:<8} {r.reason}")


def _convert(args: argparse.Namespace) -> int:
    from .models import load_classifier
    from .pipeline import convert

    kwargs = {}
    if args.labels:
        kwargs["labels"] = _csv(args.labels)
    if args.max_length:
        kwargs["max_length"] = args.max_length
    if args.weights:
        from .bundle import check_output

        check_output(Path(args.out).absolute(), [args.weights], args.overwrite)
    classifier = load_classifier(args.model, args.weights, **kwargs)
    precisions = _csv(args.precisions)
    thresholds = {p: t for p in precisions if (t := _thresholds(args, p)) is not None}
    prune = {key: value for key, value in (("heldout", args.heldout), ("min_count", args.min_token_count),
                                           ("max_vocab", args.max_vocab), ("forced_tokens", args.forced_tokens))
             if value is not None}
    result = convert(classifier, args.out, _csv(args.targets), precisions, args.verify_on,
                     passes=_csv(args.passes) if args.passes is not None else None,
                     thresholds=thresholds, overwrite=args.overwrite, quiet=args.quiet,
                     corpus=args.corpus, pass_options={"prune_vocabulary": prune} if prune else None,
                     calibration=args.calibration, range_method=args.range_method,
                     calibration_samples=args.calibration_samples,
                     float_layers=_csv(args.float_layers or ""), int8_layers=_csv(args.int8_layers or ""),
                     min_pruning_agreement=args.min_pruning_agreement)
    for gate in result.gates:
        print(f"{gate['name']:<16} {gate['status']:<8} {gate['reason']}")
    _print_records(result.bundles)
    print(f"report: {result.report_path}")
    return 0 if result.ok else 1


def _verify(args: argparse.Namespace) -> int:
    from .runtime.bundle import Bundle
    from .verify import verify_bundle

    precision = Bundle.open(args.bundle).precision
    result = verify_bundle(args.bundle, args.data, args.model, args.weights, _thresholds(args, precision))
    acc = "" if result.accuracy_bundle is None else (f", accuracy {result.accuracy_bundle:.2%} ({result.lost} lost, "
                                                     f"{result.gained} gained of {result.labeled})")
    print(f"{args.bundle}: {result.status}: max |Δlogit| {result.max_abs_diff:.3g}, agreement {result.agreement:.2%} "
          f"({result.agreeing}/{result.samples}, 95% lower bound {result.agreement_lower:.2%}){acc} ({result.reason})")
    for note in result.notes:
        print(f"  note: {note}")
    return 0 if result else 1


def _inspect(args: argparse.Namespace) -> int:
    from .runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    spec = bundle.spec
    print(f"{m['name']}: {m['target']} ({m['runtime']}), {m['precision']}, {spec.kind} classifier")
    print(f"labels: {', '.join(spec.labels)}")
    for t in spec.inputs:
        print(f"input  {t.name}: {t.dtype} {list(t.shape)}")
    for t in spec.outputs:
        print(f"output {t.name}: {t.dtype} {list(t.shape)}")
    print(f"preprocessing: {json.dumps(spec.to_dict()['preprocessing'])}")
    for name, entry in m["files"].items():
        print(f"file   {name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:16]}… ok")
    p = m["parity"]
    print(f"parity: {p['status']} ({p['reason']})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    results = run_demo(args.out, tuple(_csv(args.targets)), tuple(_csv(args.precisions)),
                       overwrite=args.overwrite, quiet=args.quiet)
    for r in results:
        _print_records(r.bundles)
    print(f"report: {Path(args.out).absolute() / 'report.html'}")
    return 0 if all(r.ok for r in results) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesdk", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a classifier into verified bundles")
    c.add_argument("--model", required=True, help="Hugging Face folder, or package.module:factory")
    c.add_argument("--weights", help="safetensors weights for a factory model")
    c.add_argument("--labels", help="comma-separated labels (override the model's)")
    c.add_argument("--max-length", type=int, help="text: tokens per input (default: the tokenizer's)")
    c.add_argument("--out", required=True, help="output folder (one sub-folder per bundle)")
    c.add_argument("--targets", default="onnx", help="comma-separated targets (default onnx)")
    c.add_argument("--precisions", default="fp32", help="comma-separated precisions (default fp32)")
    c.add_argument("--verify-on", help="verification data: .tsv of text[TAB label], or .npz / folder of images")
    c.add_argument("--passes", help="comma-separated passes to run (default: all that apply; '' for none)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    _add_thresholds(c)
    q = c.add_argument_group("int8 calibration (for --precisions ...,int8)")
    q.add_argument("--calibration", metavar="FILE", help="calibration samples (same formats as --verify-on)")
    q.add_argument("--range-method", default="mse", help="mse (default), minmax, percentile or entropy")
    q.add_argument("--calibration-samples", type=int, default=300, help="samples used (default 300)")
    q.add_argument("--float-layers", metavar="LAYERS",
                   help="comma-separated layers to keep in float (module names or shell patterns, as the report names "
                        "them, e.g. 'bert.encoder.layer.0.output.dense,*.pooler.dense')")
    q.add_argument("--int8-layers", metavar="LAYERS",
                   help="comma-separated layers that stay int8 whatever the search finds")
    v = c.add_argument_group("vocabulary pruning (text; on when --corpus is given)")
    v.add_argument("--corpus", nargs="+", metavar="FILE", help="unlabeled text files, one document per line (.gz ok)")
    v.add_argument("--heldout", metavar="FILE", help="held-out texts: report how many still tokenize exactly")
    v.add_argument("--min-token-count", type=int, help="keep tokens seen at least this often (default 1)")
    v.add_argument("--max-vocab", type=int, help="keep at most this many tokens (most frequent first)")
    v.add_argument("--forced-tokens", metavar="FILE", help="tokens to keep whatever the corpus, one per line")
    v.add_argument("--min-pruning-agreement", type=float, default=0.99,
                   help="pruning gate: the pruned model's top-1 agreement with the original on the verification "
                        "data, judged on its 95%% lower bound (default 0.99)")
    c.set_defaults(func=_convert)

    v = sub.add_parser("verify", help="re-check a bundle's parity; exit 1 when it fails")
    v.add_argument("bundle")
    v.add_argument("--data", required=True, help="samples to check (same formats as --verify-on)")
    v.add_argument("--model", help="compute PyTorch's outputs with this model instead of the stored ones")
    v.add_argument("--weights", help="safetensors weights for a factory --model")
    _add_thresholds(v)
    v.set_defaults(func=_verify)

    i = sub.add_parser("inspect", help="check a bundle's files and print its manifest")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=_inspect)

    d = sub.add_parser("demo", help="train two small classifiers offline and convert them")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--targets", default="onnx,tflite,openvino,tensorrt")
    d.add_argument("--precisions", default="fp32,int8")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # torchao (installed by litert-torch) logs import-time noise when transformers loads it
    for noisy in ("torch.utils._pytree", "torchao"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except EdgeSDKError as e:
        print(f"edgesdk: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgesdk: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
