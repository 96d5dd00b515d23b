"""The ``edgesdk`` command: convert, verify, inspect, compare, demo.

Exit codes: 0 every gate passed; 1 a parity or model gate (pruning, tokenization) failed (the
bundles are written and the report says why); 2 bad input (the message names the problem and
the fix); 3 an internal error (a bug: ``--debug`` shows the traceback); 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from . import __version__, signals, terminal
from .errors import EdgeSDKError

__all__ = ["main", "EXIT_OK", "EXIT_GATE_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERNAL"]

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _csv(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _say(text: str = "") -> None:
    print(text, file=terminal.out())


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _say("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _results(results: list[Any], args: argparse.Namespace, report: Path | None = None) -> int:
    """Print a conversion's (or the demo's) results, write the JUnit and baseline extras, and
    return the exit code."""
    from .baseline import compare_reports, format_comparison, read_report
    from .junit import write_junit

    reports = [r.report for r in results]
    summary = {"ok": all(r.ok for r in results), "report": str(report or results[0].report_path),
               "models": [{"model": r.model, "gates": r.gates,
                           "bundles": [{k: v for k, v in b.to_dict().items() if k != "robustness"}
                                       | {"path": str(b.path) if b.path else None} for b in r.bundles]}
                          for r in results]}
    if args.junit:
        summary["junit"] = str(write_junit(args.junit, reports))
    if args.baseline:
        comparison = compare_reports(read_report(args.baseline), {"models": reports})
        summary["baseline"] = {"report": args.baseline, "bundles": comparison}
    if args.json:
        _say(json.dumps(summary, indent=2, default=str))
        return EXIT_OK if summary["ok"] else EXIT_GATE_FAILED
    rows = [["model", "bundle", "status", "reason"]]
    for r in results:
        rows += [[r.model, g["name"], g["status"], g["reason"]] for g in r.gates]
        rows += [[r.model, b.name, b.status, b.reason] for b in r.bundles]
    _table(rows)
    if args.baseline:
        _say(f"\nsince {args.baseline}:")
        _table(format_comparison(comparison))
    _say(f"report: {summary['report']}")
    if args.junit:
        _say(f"junit: {summary['junit']}")
    return EXIT_OK if summary["ok"] else EXIT_GATE_FAILED


def _config(args: argparse.Namespace):
    """The conversion's config: the --config file's, with the options given on the command line."""
    from .config import ConvertConfig

    base = ConvertConfig.load(args.config) if args.config else ConvertConfig()
    given = {"model": args.model, "weights": args.weights, "labels": _csv(args.labels),
             "max_length": args.max_length, "targets": _csv(args.targets), "precisions": _csv(args.precisions),
             "verify_on": args.verify_on, "verify_samples": args.verify_samples,
             "passes": _csv(args.passes), "max_abs_diff": args.max_abs_diff,
             "min_agreement": args.min_agreement, "calibration": args.calibration,
             "range_method": args.range_method, "calibration_samples": args.calibration_samples,
             "float_layers": _csv(args.float_layers), "int8_layers": _csv(args.int8_layers),
             "corpus": tuple(args.corpus) if args.corpus else None, "heldout": args.heldout,
             "corpus_engine": args.corpus_engine, "corpus_processes": args.corpus_processes,
             "spark_master": args.spark_master,
             "min_token_count": args.min_token_count, "max_vocab": args.max_vocab,
             "forced_tokens": args.forced_tokens, "vocab_prior": args.vocab_prior,
             "min_coverage": args.min_coverage, "target_agreement": args.target_agreement,
             "min_pruning_agreement": args.min_pruning_agreement, "text_input": args.text_input}
    config = base.replace(**given)
    if args.passes == "":
        config = config.replace(passes=())
    return config


def _convert(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .models import load_classifier
    from .pipeline import convert

    config = _config(args)
    if config.model is None:
        raise InputError("no model: give --model (a Hugging Face folder or package.module:factory) or a --config "
                         "that names one")
    if config.weights:
        from .bundle import check_output

        check_output(Path(args.out).absolute(), [config.weights], args.overwrite)
    kwargs = {k: v for k, v in (("labels", list(config.labels or ())), ("max_length", config.max_length)) if v}
    classifier = load_classifier(config.model, config.weights, **kwargs)
    result = convert(classifier, args.out, config, overwrite=args.overwrite, quiet=args.quiet or args.json,
                     baseline=args.baseline)
    return _results([result], args)


def _verify(args: argparse.Namespace) -> int:
    from .runtime.bundle import Bundle
    from .verify import verify_bundle

    precision = Bundle.open(args.bundle).precision
    thresholds = _thresholds(args, precision)
    result = verify_bundle(args.bundle, args.data, args.model, args.weights, thresholds)
    acc = "" if result.accuracy_bundle is None else (f", accuracy {result.accuracy_bundle:.2%} ({result.lost} lost, "
                                                     f"{result.gained} gained of {result.labeled})")
    _say(f"{args.bundle}: {result.status}: max |Δlogit| {result.max_abs_diff:.3g}, agreement {result.agreement:.2%} "
         f"({result.agreeing}/{result.samples}, 95% lower bound {result.agreement_lower:.2%}){acc} ({result.reason})")
    for note in result.notes:
        _say(f"  note: {note}")
    return EXIT_GATE_FAILED if result.status == "fail" else EXIT_OK


def _thresholds(args: argparse.Namespace, precision: str):
    from .config import ConvertConfig

    if args.max_abs_diff is None and args.min_agreement is None:
        return None
    return ConvertConfig(max_abs_diff=args.max_abs_diff, min_agreement=args.min_agreement).thresholds(precision)


def _inspect(args: argparse.Namespace) -> int:
    from .runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    m = bundle.manifest
    if args.json:
        _say(json.dumps(m, indent=2, sort_keys=True))
        return EXIT_OK
    spec = bundle.spec
    _say(f"{m['name']}: {m['target']} ({m['runtime']}), {m['precision']}, {spec.kind} classifier")
    _say(f"labels: {', '.join(spec.labels)}")
    for t in spec.inputs:
        _say(f"input  {t.name}: {t.dtype} {list(t.shape)}")
    for t in spec.outputs:
        _say(f"output {t.name}: {t.dtype} {list(t.shape)}")
    _say(f"preprocessing: {json.dumps(spec.to_dict()['preprocessing'])}")
    for name, entry in m["files"].items():
        purpose = f" ({entry['purpose']})" if entry.get("purpose") else ""
        _say(f"file   {name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:16]}… ok{purpose}")
    p = m["parity"]
    _say(f"parity: {p['status']} ({p['reason']})")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from .baseline import compare_reports, format_comparison, read_report

    rows = compare_reports(read_report(args.before), read_report(args.after))
    if args.json:
        _say(json.dumps(rows, indent=2))
    else:
        _table(format_comparison(rows))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    results = run_demo(args.out, _csv(args.targets), _csv(args.precisions), overwrite=args.overwrite,
                       quiet=args.quiet or args.json)
    return _results(results, args, Path(args.out).absolute() / "report.html")


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-abs-diff", type=float, help="largest allowed |logit difference| (fp32 default 1e-4)")
    p.add_argument("--min-agreement", type=float, help="smallest allowed top-1 agreement, 0-1 (default 0.99)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an output folder edgesdk wrote before")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the result table")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout (no progress)")
    p.add_argument("--junit", metavar="FILE", help="write the parity gates as JUnit XML (one case per bundle x gate)")
    p.add_argument("--baseline", metavar="REPORT",
                   help="an earlier report.json: show each bundle's change in bytes, latency, agreement, accuracy")


def _names(registry_module: str, registry: str) -> str:
    """The registered names, for --help (passes import torch, so only `convert --help` lists them)."""
    import importlib

    return ", ".join(getattr(importlib.import_module(registry_module), registry).names())


def _convert_parser(sub: Any, choices: bool) -> None:
    def listed(module: str, registry: str) -> str:
        return f": {_names(module, registry)}" if choices else ""

    c = sub.add_parser("convert", help="convert a classifier into verified bundles")
    c.add_argument("--config", metavar="FILE",
                   help="a TOML config, or a bundle's manifest.json to replay its conversion (options given here win)")
    c.add_argument("--model", help="Hugging Face folder, or package.module:factory")
    c.add_argument("--weights", help="safetensors weights for a factory model")
    c.add_argument("--labels", help="comma-separated labels (override the model's)")
    c.add_argument("--max-length", type=int, help="text: tokens per input (default: the tokenizer's)")
    c.add_argument("--out", required=True, help="output folder (one sub-folder per bundle)")
    c.add_argument("--targets", help=f"comma-separated targets (default onnx){listed('edgesdk.targets', 'TARGETS')}")
    c.add_argument("--precisions", help="comma-separated precisions (default fp32): fp32, int8 (fp16: tensorrt)")
    c.add_argument("--verify-on", help="verification data: .tsv of text[TAB label], or .npz / folder of images")
    c.add_argument("--verify-samples", type=int, metavar="N",
                   help="verify N of the file's samples, evenly spaced in file order (default: all; any number is "
                        "streamed in bounded memory)")
    c.add_argument("--text-input", choices=("ids", "string"),
                   help="text: what an onnx bundle takes: token ids (default; the app tokenizes with the bundle's "
                        "tokenizer.json) or strings (the tokenizer inside the graph: pip install 'edgesdk[strings]')")
    c.add_argument("--passes", help="comma-separated passes to run (default: all that apply; '' for none)"
                                    f"{listed('edgesdk.converters', 'PASSES')}")
    _add_output(c)
    _add_thresholds(c)
    q = c.add_argument_group("int8 calibration (for --precisions ...,int8)")
    q.add_argument("--calibration", metavar="FILE", help="calibration samples (same formats as --verify-on)")
    q.add_argument("--range-method", help="activation ranges (default mse)"
                                          f"{listed('edgesdk.calibration', 'RANGE_METHODS')}")
    q.add_argument("--calibration-samples", type=int, help="samples used (default 300)")
    q.add_argument("--float-layers", metavar="LAYERS",
                   help="comma-separated layers to keep in float (module names or shell patterns, as the report names "
                        "them, e.g. 'bert.encoder.layer.0.output.dense,*.pooler.dense')")
    q.add_argument("--int8-layers", metavar="LAYERS",
                   help="comma-separated layers that stay int8 whatever the search finds")
    v = c.add_argument_group("vocabulary pruning (text; on when --corpus is given)")
    v.add_argument("--corpus", nargs="+", metavar="SOURCE",
                   help="unlabeled texts: text files or globs of shards, one document per line (.gz ok); "
                        "FILE.parquet:COLUMN, FILE.arrow:COLUMN, or a saved datasets folder (FOLDER:COLUMN)")
    v.add_argument("--corpus-engine", choices=("local", "spark"),
                   help="who counts the corpus's tokens: this machine's cores (default) or Spark "
                        "(pip install 'edgesdk[spark]'; see --spark-master)")
    v.add_argument("--corpus-processes", type=int, metavar="N",
                   help="local engine: worker processes (default: every core, for corpora over 8 MB)")
    v.add_argument("--spark-master", metavar="URL", help="spark engine: the master URL (default local[*])")
    v.add_argument("--heldout", metavar="FILE",
                   help="held-out texts like your traffic: report how many still tokenize exactly, and size the "
                        "vocabulary on them (default for sizing: every 10th of the corpus's first 20,000 lines)")
    v.add_argument("--min-token-count", type=int, help="keep tokens seen at least this often (default 1)")
    v.add_argument("--max-vocab", type=int, help="keep at most this many tokens (most frequent first)")
    v.add_argument("--forced-tokens", metavar="FILE", help="tokens to keep whatever the corpus, one per line")
    v.add_argument("--min-coverage", type=float, metavar="SHARE",
                   help="keep the smallest vocabulary under which this share of held-out texts tokenize exactly "
                        "as before (e.g. 0.99)")
    v.add_argument("--target-agreement", type=float, metavar="SHARE",
                   help="keep the smallest vocabulary under which the model keeps this share of its answers on "
                        "held-out texts (e.g. 0.99; runs the model)")
    v.add_argument("--vocab-prior", metavar="PRIOR",
                   help="rank pieces your corpus lacks, to add up to the size asked: 'tokenizer' (Unigram scores, "
                        "BPE merge ranks), 'wordfreq:LANG' (a language's frequent words; pip install "
                        "'edgesdk[prior]'), or both in turn ('wordfreq:es,tokenizer')")
    v.add_argument("--min-pruning-agreement", type=float,
                   help="pruning gate: the pruned model's top-1 agreement with the original on the verification "
                        "data, judged on its 95%% lower bound (default 0.99)")
    c.set_defaults(func=_convert)


def _parser(choices: bool = False) -> argparse.ArgumentParser:
    """The command line; ``choices`` lists registered names in ``convert --help`` (imports torch)."""
    parser = argparse.ArgumentParser(prog="edgesdk", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgesdk {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs too")
    common.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True), common)
    _convert_parser(sub, choices)

    v = sub.add_parser("verify", help="re-check a bundle's parity; exit 1 when it fails (a TensorRT bundle is "
                                       "checked in its onnxruntime proxy and said to be skipped)")
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

    c = sub.add_parser("compare", help="each bundle's change between two conversions' report.json")
    c.add_argument("before", help="the earlier report.json (or its folder)")
    c.add_argument("after", help="the later report.json (or its folder)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=_compare)

    d = sub.add_parser("demo", help="train two small classifiers offline and convert them")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--targets", default="onnx,tflite,openvino,tensorrt")
    d.add_argument("--precisions", default="fp32,int8")
    _add_output(d)
    d.set_defaults(func=_demo)
    return parser


class _Subcommands:
    """``add_parser`` with the options every subcommand takes (--verbose, --debug)."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser) -> None:
        self.sub, self.common = sub, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self.sub.add_parser(name, parents=[self.common], **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_help = "convert" in argv and ("-h" in argv or "--help" in argv)
    args = _parser(choices=wants_help).parse_args(argv)
    signals.install()
    log = None
    try:
        with terminal.own_terminal(args.verbose) as log:
            code = args.func(args)
        return 128 + signals.received() if signals.received() else code
    except EdgeSDKError as e:
        print(f"edgesdk: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("edgesdk: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in edgesdk or a library: say so, never a bare traceback
        if args.debug:
            traceback.print_exc()
        where = f"; other libraries' output is in {log}" if log else ""
        print(f"edgesdk: internal error: {type(e).__name__}: {str(e)[:500]} (run with --debug for the traceback"
              f"{where}; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
