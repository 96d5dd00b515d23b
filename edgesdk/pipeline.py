"""The conversion pipeline: passes on the model, then every target x precision, verified.

``convert`` validates everything it can before writing, builds each bundle in a staging
folder, runs it in its own runtime against PyTorch on the verification data, writes the
report, and moves the whole output into place at the end.
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .baseline import read_report
from .bundle import staged_output, write_array_files, write_manifest, write_npz
from .calibration import (
    MAX_JUDGE_SAMPLES,
    MIN_SAMPLES,
    RANGE_METHODS,
    Budget,
    Calibration,
    Judge,
    LayerChoice,
    calibrate,
    judgement_caveat,
)
from .config import ConvertConfig
from .converters import PASSES, run_passes
from .data import Samples, read_samples
from .errors import EdgeSDKError, InputError
from .fidelity import PruningFidelity
from .figures import BundleFigures
from .models import Classifier, TextClassifier
from .parity import ParityAccumulator, ParityResult, Thresholds, as_proxy, default_thresholds, skipped
from .progress import Steps
from .report import write_report
from .robustness import perturb
from .runtime.bundle import Bundle
from .runtime.encode import encoder_for
from .runtime.runner import Runner, import_runtime
from .runtime.runners import RUNNERS
from .spec import ModelSpec, TextPreprocessing
from .targets import TARGETS, Target
from .targets.base import RANGES_FILE, RANGES_PURPOSE
from .tokenization import javascript_tokenization_gate
from .verification import (
    HEAD,
    ArrayFile,
    Verification,
    VerificationData,
    input_digests,
    logits_to_file,
    model_logits,
    rate,
)

__all__ = ["convert", "ConversionResult", "BundleRecord", "REFERENCE_FILE", "TIMING", "without_timing"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

REFERENCE_FILE = "reference.safetensors"
GOLDEN_FILE = "golden.npz"
TIMING = "timing"  # key of wall-clock figures: in report.json, never in a manifest


@dataclass
class BundleRecord:
    """One target x precision: where it went, its parity, size and latency, or its error."""

    name: str
    target: str
    precision: str
    status: str
    reason: str
    path: Path | None = None
    parity: ParityResult | None = None
    bytes: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    figures: BundleFigures | None = field(default=None, repr=False)
    notes: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "precision": self.precision,
            "status": self.status,
            "reason": self.reason,
            "bytes": self.bytes,
            "latency_ms": self.latency_ms,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "int8": _int8_summary(self.notes),
            "robustness": self.robustness,
        }


def _int8_summary(notes: dict[str, Any]) -> dict[str, Any] | None:
    """What is int8 in a bundle and which layers stayed float, for the report."""
    if "int8" not in notes:
        return None
    if "recipes_tried" in notes:  # the runtime's own quantizer (LiteRT): its recipe, float layers and float ops
        return {"what": notes["int8"], "recipes_tried": notes["recipes_tried"], "judged_on": notes.get("judged_on"),
                **{k: notes[k] for k in ("float_layers", "float_layers_added", "float_layers_int8_weights",
                                         "float_layers_dynamic_range", "float_ops") if k in notes}}
    calibration = notes.get("calibration", {})
    return {"what": notes["int8"], "method": calibration.get("method"),
            "quantized_layers": calibration.get("quantized_layers"),
            "quantizable_layers": calibration.get("quantizable_layers"),
            "float_layers": [{k: f[k] for k in ("layer", "kl_alone", "local_snr_db", "forced", "weights")}
                             for f in calibration.get("float_layers", [])],
            "residual_layers": [{k: f[k] for k in ("layer", "kl_alone", "local_snr_db", "weights")}
                                for f in calibration.get("residual_weights", {}).get("layers", [])],
            "judged_on": calibration.get("judged_on"), "judged_effect": calibration.get("judged_effect"),
            "judgement_caveat": judgement_caveat(calibration) if calibration else None,
            "smoothing": calibration.get("smoothing"), "weight_rounding": calibration.get("weight_rounding"),
            "divergence": _divergence_summary(calibration.get("divergence"))}


def _divergence_summary(divergence: dict[str, Any] | None) -> dict[str, Any] | None:
    if not divergence:
        return None
    worst = sorted(divergence["layers"], key=lambda row: row["snr_db"])[:5]
    return {k: divergence[k] for k in ("samples", "snr_floor_db", "first_below_floor", "suggested_fallback")} | {
        "lowest_snr": worst}


@dataclass
class ConversionResult:
    """What ``convert`` wrote: bundle records, pass records and the report's path."""

    out: Path
    model: str
    bundles: list[BundleRecord]
    passes: list[dict[str, Any]]
    report_path: Path
    report: dict[str, Any] = field(repr=False, default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no bundle failed its parity or its build (skipped is not a failure) and every
        model-level gate (pruning fidelity, tokenization in JavaScript) passed or was skipped."""
        return all(b.status in ("pass", "skipped") for b in self.bundles) and all(
            g["status"] in ("pass", "skipped") for g in self.gates)


@dataclass(frozen=True)
class CalibrationPlan:
    """Calibration samples and how to turn them into int8 (range method, budget, layer choice)."""

    samples: Samples
    method: str
    budget: Budget
    choice: LayerChoice = LayerChoice()


class Artifacts:
    """Intermediate files shared by targets: the float ONNX export and the int8 calibration
    are each made once, and every target's bundle is built from them."""

    def __init__(self, classifier: Classifier, workdir: Path, steps: Steps,
                 calibration: CalibrationPlan | None = None, verification: Verification | None = None,
                 text_input: str = "ids") -> None:
        from .converters.export import ONNX_OPSET

        self.classifier = classifier
        self.text_input = text_input
        self.workdir = workdir
        self.steps = steps
        self.onnx_opset = ONNX_OPSET
        self.plan = calibration
        self.verification = verification
        self._onnx: Path | None = None
        self._calibration: Calibration | None = None

    def onnx_fp32(self) -> Path:
        if self._onnx is None:
            from .converters.export import export_onnx

            with self.steps.step("export to ONNX (torch.export)"):
                self._onnx = export_onnx(self.classifier, self.workdir / "model.fp32.onnx")
        return self._onnx

    @cached_property
    def judge(self) -> Judge | None:
        """The verification samples int8 float layers are chosen on: at most MAX_JUDGE_SAMPLES,
        evenly spaced."""
        if self.verification is None:
            return None
        items, labels = self.verification.subset(MAX_JUDGE_SAMPLES)
        return Judge(self.classifier.encoder().encode(items), labels,
                     f"the verification data ({self.verification.data.source})")

    def calibration(self) -> Calibration:
        """edgesdk's int8 calibration of the float ONNX model (QDQ model, ranges, float layers)."""
        if self._calibration is None:
            if self.plan is None:
                raise InputError("int8 needs calibration data: pass calibration= / --calibration FILE")
            onnx_fp32 = self.onnx_fp32()
            plan = self.plan
            with self.steps.step(f"int8 calibration ({plan.method}) on {len(plan.samples)} samples") as update:
                encoder = self.classifier.encoder()
                self._calibration = calibrate(onnx_fp32, encoder.encode(plan.samples.items), plan.samples.labels,
                                              encoder, self.workdir / "calibration", plan.method, plan.budget,
                                              update, judge=self.judge, choice=plan.choice)
            why = judgement_caveat(self._calibration.figures)
            if why is not None:
                self.steps.note(f"  int8: {why}")
        return self._calibration


def _versions(target: type[Target]) -> dict[str, str | None]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"edgesdk": __version__, "torch": version("torch"), "onnx": version("onnx"),
            target.distribution: target.runtime_version()}


def _latency(bundle: Bundle, rows: list, runs: int = 30) -> dict[str, float]:
    """Batch-1 latency percentiles on this machine (run-dependent: report only). Token ids are
    padded to max_length on every runtime, as fixed-shape runtimes (TFLite) must run them, so the
    figures of id-in bundles are measured the same way; a string-in bundle runs the texts as they
    are (tokenizer included, each at its own length)."""
    rows = [_padded(r, bundle.spec) for r in rows[:runs]]
    times = []
    with bundle.runner() as runner:
        for i in range(runs + 3):
            _, feeds = next(bundle.encoder.batches([rows[i % len(rows)]], 1))
            start = time.perf_counter()
            runner.infer(feeds)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def _padded(row: dict[str, Any], spec: Any) -> dict[str, Any]:
    """A text row of ids padded to max_length (pad id, mask 0: the logits do not change); images and
    strings (tokenized in the graph) as they are."""
    if spec.kind != "text" or spec.preprocessing.text_input == "string":
        return row
    pre = spec.preprocessing
    out = {}
    for name, value in row.items():
        value = np.asarray(value)[: pre.max_length]
        out[name] = np.pad(value, (0, pre.max_length - len(value)),
                           constant_values=pre.pad_id if name == "input_ids" else 0)
    return out


def _purposes(target: Target, spec: ModelSpec) -> dict[str, str]:
    """What each file a bundle can hold is for (the manifest says it beside the file)."""
    purposes = {**target.purposes, RANGES_FILE: RANGES_PURPOSE,
                REFERENCE_FILE: "PyTorch's logits on the verification data, by sample digest: `edgesdk verify` "
                                "checks the bundle against them",
                GOLDEN_FILE: "a few samples with PyTorch's outputs: the loader's self-test"}
    if isinstance(spec.preprocessing, TextPreprocessing):
        purposes[spec.preprocessing.tokenizer] = (
            "the tokenizer the model's graph tokenizes with (the graph holds its own copy; no loader reads this one)"
            if spec.preprocessing.text_input == "string" else
            "the tokenizer: the loaders encode text with it (tokenizers in Python, Tokenizers.js in the browser)")
    return purposes


def _build_one(target: Target, precision: str, config: ConvertConfig, classifier: Classifier, artifacts: Artifacts,
               folder: Path, verification: Verification | None, passes: list[dict[str, Any]],
               gates: list[dict[str, Any]], update: Progress) -> BundleRecord:
    """Write one bundle's files and manifest, then run it in its runtime against PyTorch."""
    thresholds = config.thresholds(precision)
    folder.mkdir()
    notes = target.build(artifacts, precision, folder)
    spec = target.bundle_spec(classifier.spec, config.text_input)
    if isinstance(classifier, TextClassifier):
        shutil.copyfile(classifier.tokenizer_file, folder / classifier.spec.preprocessing.tokenizer)
    if verification is not None:
        digests = verification.digests if spec is classifier.spec else input_digests(
            verification.data, encoder_for(spec, None), artifacts.workdir / f"{folder.name}.digests")
        write_array_files(folder / REFERENCE_FILE, {
            "digests": digests, "logits": verification.reference, "labels": verification.labels})
    manifest = _manifest(target, precision, config, spec, notes, passes, gates, verification)
    purposes = _purposes(target, spec)
    write_manifest(folder, {**manifest, "parity": skipped("pending", thresholds).to_dict()}, purposes)
    record = BundleRecord(folder.name, target.name, precision, "skipped", "", path=folder, notes=notes)
    runtime = RUNNERS.get(target.name)
    if verification is None:
        record.parity = skipped("no verification data was given (pass verify_on / --verify-on)", thresholds)
    elif proxied := runtime.proxy_reason():
        record.parity = _proxy_parity(Bundle.open(folder), runtime, record, verification, thresholds, proxied, update)
    elif reason := target.parity_skip_reason():
        record.parity = skipped(reason, thresholds)
    else:
        manifest["golden"] = _verify(Bundle.open(folder), record, verification, thresholds, update)
    record.status, record.reason = record.parity.status, record.parity.reason
    write_manifest(folder, {**manifest, "parity": record.parity.to_dict()}, purposes)
    record.bytes = sum(p.stat().st_size for p in folder.iterdir())
    return record


def _manifest(target: Target, precision: str, config: ConvertConfig, spec: ModelSpec, notes: dict[str, Any],
              passes: list[dict[str, Any]], gates: list[dict[str, Any]],
              verification: Verification | None) -> dict[str, Any]:
    """The bundle's manifest without its parity: the same bytes for the same inputs on every run
    (timings go to report.json only); ``gates`` are the model's (pruning, tokenization)."""
    return {
        "format": "edgesdk-bundle",
        "name": f"{spec.name}-{target.name}-{precision}",
        "target": target.name,
        "runtime": target.runtime,
        "precision": precision,
        "model_file": target.model_file,
        "spec": spec.to_dict(),
        "config": config.to_dict(),
        "build": without_timing(notes),
        "passes": without_timing(passes),
        "gates": gates,
        "reference": {"file": REFERENCE_FILE, "samples": verification.count} if verification else None,
        "versions": _versions(type(target)),
    }


def without_timing(value: Any) -> Any:
    """``value`` without its ``timing`` entries (wall-clock figures that differ on every run)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k != TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def _stream(bundle: Bundle, verification: Verification, thresholds: Thresholds, update: Progress,
            runtime: str | None = None) -> tuple[ParityResult, BundleFigures, np.ndarray]:
    """Run the bundle (in ``runtime``'s runner when given) over every verification chunk: parity
    and report figures accumulated, and the logits of the first ``HEAD`` samples."""
    parity, figures, head = ParityAccumulator(thresholds), BundleFigures(list(bundle.spec.labels)), []
    started = time.perf_counter()
    with bundle.runner(runtime) as runner:
        for start, samples, reference in verification.chunks():
            outputs = bundle.run_rows(bundle.encoder.encode(samples.items), runner=runner)
            logits = outputs["logits"]
            parity.add_run(reference, outputs, samples.labels)
            figures.add(start, samples.items, samples.labels, reference, logits)
            if start < HEAD:
                head.append(logits[:HEAD - start])
            update(rate(start + len(samples), verification.count, started))
    return parity.result(), figures, np.concatenate(head)


def _verify(bundle: Bundle, record: BundleRecord, verification: Verification, thresholds: Thresholds,
            update: Progress) -> dict[str, Any]:
    """Run the bundle on the verification data and fill ``record`` (parity, figures, robustness,
    latency); returns the manifest's golden entry."""
    record.parity, record.figures, head = _stream(bundle, verification, thresholds, update)
    head_rows = bundle.encoder.encode(verification.head.items)
    golden = _write_golden(bundle.path, verification, head_rows, head, thresholds)
    record.robustness = _robustness(bundle, verification, head)
    calibration = record.notes.get("calibration", {})
    if calibration.get("met_budget") is False:
        record.parity = replace(record.parity, status="fail", reason=(
            f"edgesdk's calibration could not meet the int8 budget on {calibration['judged_on']} "
            f"({calibration['judge_samples']} samples) with any float layers it tried; this is the best "
            f"configuration found ({record.parity.reason})"))
    if "tokenization" in record.notes:  # a string-in bundle: its in-graph tokenizer against Python's
        record.parity = _with_tokenization_gate(record.parity, record.notes["tokenization"])
    record.latency_ms = _latency(bundle, head_rows)
    return golden


def _with_tokenization_gate(parity: ParityResult, gate: dict[str, Any]) -> ParityResult:
    """``parity`` with the in-graph tokenization gate's counts as a note, failed when the gate failed."""
    parity = replace(parity, notes=[*parity.notes, f"{gate['name']}: {gate['texts_exact']} of {gate['texts']} texts "
                                                   f"identical; {gate['reason']}"])
    if gate["status"] == "fail":
        parity = replace(parity, status="fail", reason=f"{gate['reason']} ({parity.reason})")
    return parity


def _proxy_parity(bundle: Bundle, runtime: type[Runner], record: BundleRecord, verification: Verification,
                  thresholds: Thresholds, reason: str, update: Progress) -> ParityResult:
    """Parity of the bundle's model file in ``runtime``'s proxy: "skipped" (the real runtime did
    not run) with every figure of the proxy, or "fail" when even the proxy misses the thresholds."""
    result, record.figures, _ = _stream(bundle, verification, thresholds, update, runtime=runtime.proxy_runtime)
    return as_proxy(result, reason, runtime.proxy)


def _robustness(bundle: Bundle, verification: Verification, head: np.ndarray) -> dict[str, dict[str, float]]:
    """Per perturbation: agreement with PyTorch, and how often each changed its answer."""
    out = {}
    for name, (items, reference) in verification.perturbed.items():
        rows = bundle.encoder.encode(items)
        moved = bundle.run_rows(rows)["logits"].argmax(1)
        before = verification.reference.read(0, len(rows)).argmax(1)
        out[name] = {"samples": len(rows), "agreement": float((moved == reference.argmax(1)).mean()),
                     "pytorch_changed": float((reference.argmax(1) != before).mean()),
                     "bundle_changed": float((moved != head[:len(rows)].argmax(1)).mean())}
    return out


def _write_golden(folder: Path, verification: Verification, head_rows: list, head: np.ndarray,
                  thresholds: Thresholds, count: int = 4) -> dict[str, Any]:
    """Store a few verification samples (texts or pixels) with their encoded inputs and PyTorch's
    logits for the loader's self-test, which encodes them again with the bundle's own tokenizer.

    The tolerance is the fp32 threshold, or twice the bundle's own distance from PyTorch on
    these samples (int8), whichever is larger.
    """
    k = min(count, verification.count)
    arrays = {f"{i}/{name}": value for i in range(k) for name, value in head_rows[i].items()}
    if isinstance(verification.head.items[0], str):
        arrays["texts"] = np.array(verification.head.items[:k], dtype=str)
    reference = verification.reference.read(0, k)
    observed = float(np.abs(head[:k] - reference).max())
    write_npz(folder / GOLDEN_FILE, {"pytorch_logits": reference, "bundle_top1": head[:k].argmax(1), **arrays})
    return {"file": GOLDEN_FILE, "samples": k,
            "tolerance": max(thresholds.max_abs_diff or 0.0, 2 * observed, 1e-5)}


def _plan(targets: tuple[str, ...], precisions: tuple[str, ...]) -> list[tuple[Target, str]]:
    plan = []
    for t in targets:
        target = TARGETS.get(t)()
        for p in precisions:
            default_thresholds(p)
            if p not in target.precisions:
                raise InputError(f"target {t!r} builds {', '.join(target.precisions)}, not {p!r}")
            plan.append((target, p))
    if not plan:
        raise InputError("no bundles requested: give at least one target and one precision")
    return plan


@dataclass(frozen=True)
class _Job:
    """A checked conversion: which bundles, which passes with which options, which data."""

    config: ConvertConfig
    bundles: list[tuple[Target, str]]
    pass_names: list[str]
    pass_options: dict[str, dict[str, Any]]
    applying: list[str]
    data: VerificationData | None
    calibration: CalibrationPlan | None
    inputs: list[Path]


def _check_text_input(config: ConvertConfig, model: Classifier, bundles: list[tuple[Target, str]]) -> None:
    """String input needs a text model, a bundle that can take strings, and the tokenizer operators."""
    if config.text_input == "ids":
        return
    if model.spec.kind != "text":
        raise InputError("text_input 'string' applies to text models; this one is an image model: drop it")
    if all(t.bundle_spec(model.spec, config.text_input) is model.spec for t, _ in bundles):
        raise InputError("text_input 'string' applies to onnx bundles (the tokenizer runs in onnxruntime): "
                         "add onnx to the targets")
    import_runtime("onnxruntime_extensions", "strings")


def _prepare(model: Classifier, config: ConvertConfig) -> _Job:
    """Check everything that can be checked before any work or any write."""
    bundles = _plan(config.targets, config.precisions)
    pass_names = list(PASSES.names()) if config.passes is None else list(config.passes)
    prune = {key: value for key, value in (("corpus", list(config.corpus)), ("heldout", config.heldout),
                                           ("min_count", config.min_token_count), ("max_vocab", config.max_vocab),
                                           ("forced_tokens", config.forced_tokens),
                                           ("prior", config.vocab_prior), ("min_coverage", config.min_coverage),
                                           ("target_agreement", config.target_agreement),
                                           ("processes", config.corpus_processes),
                                           ("spark_master", config.spark_master)) if value}
    if config.corpus_engine != "local":
        prune["engine"] = config.corpus_engine
    options = {"prune_vocabulary": prune} if config.corpus else {}
    if not config.corpus and len(prune):
        raise InputError(f"{', '.join(sorted(prune))} only apply to vocabulary pruning: give a corpus too")
    # unknown names and bad options fail here, before any work
    checked = {name: PASSES.get(name)(**options.get(name, {})) for name in [*pass_names, *options]}
    applying = [name for name in pass_names if checked[name].applies_to(model)]
    _check_text_input(config, model, bundles)
    data = VerificationData(config.verify_on, model.spec, config.verify_samples) if config.verify_on else None
    plan = _calibration_plan(model, config)
    corpus = [f for s in checked["prune_vocabulary"].corpus for f in s.files()] if config.corpus else []
    inputs = [*model.input_paths(), *corpus, *(Path(p) for p in (config.verify_on, config.calibration,
                                                                 config.heldout, config.forced_tokens) if p)]
    return _Job(config, bundles, pass_names, options, applying, data, plan, inputs)


def convert(model: Classifier, out: str | Path, config: ConvertConfig | None = None, *, overwrite: bool = False,
            quiet: bool = False, baseline: str | Path | None = None, **options: Any) -> ConversionResult:
    """Convert ``model`` into one verified bundle per target x precision under ``out``.

    What to build is a ``ConvertConfig``, given whole or as its fields (``targets=["onnx"],
    precisions=["fp32", "int8"], verify_on="val.tsv", corpus=[...]``: keywords override the
    config's). ``passes`` defaults to every registered pass that applies; ``corpus`` turns on
    vocabulary pruning; int8 bundles are calibrated on the first ``calibration_samples`` of
    ``calibration`` with ``range_method``, and their float fallbacks chosen for the int8
    thresholds on the verification data; ``float_layers`` / ``int8_layers`` force layers.
    When a pass that is not exact (vocabulary pruning) changed the model, bundles are compared
    with the rewritten PyTorch model, and the rewrite with the original on its own gate
    (``min_pruning_agreement``, judged on its 95% lower bound). ``baseline``, an earlier
    report.json, puts each bundle's change since then at the top of the report.
    """
    if not isinstance(model, Classifier):
        raise InputError(f"convert() takes an edgesdk TextClassifier or ImageClassifier, not {type(model).__name__}")
    config = ConvertConfig.from_dict({**(config or ConvertConfig()).to_dict(), **options}, "convert()")
    job = _prepare(model, config)
    log.debug("config: %s", config.to_dict())
    previous = read_report(baseline) if baseline is not None else None
    steps = Steps(quiet)
    with (staged_output(out, overwrite, job.inputs) as staging,
          tempfile.TemporaryDirectory(prefix="edgesdk-work-") as work):
        classifier, pass_records, gates, verification = _model_stage(model, job, steps, Path(work))
        artifacts = Artifacts(classifier, Path(work), steps, job.calibration, verification, config.text_input)
        records = [_bundle(target, precision, job, classifier, artifacts, staging, verification, pass_records, gates,
                           steps) for target, precision in job.bundles]
        with steps.step("report"):
            report = write_report(staging, classifier.spec, records, pass_records, verification, gates, previous)
    out = Path(out).absolute()
    for r in records:
        if r.path is not None:
            r.path = out / r.path.name
    return ConversionResult(out, classifier.spec.name, records, pass_records, out / "report.html", report, gates)


def _model_stage(model: Classifier, job: _Job, steps: Steps, work: Path
                 ) -> tuple[Classifier, list[dict[str, Any]], list[dict[str, Any]], Verification | None]:
    """PyTorch's reference, the passes, the model gates (pruning fidelity; tokenization in
    JavaScript when an ONNX bundle, which the browser runs, is built), and the verification set,
    streamed."""
    data, measure = job.data, None
    if data is not None:
        with steps.step(f"PyTorch reference on {data.rule()} and {model.spec.kind} perturbations") as update:
            reference = logits_to_file(model, data, work / "reference.f32", update)
            head = data.head()
            perturbed = {name: (items, model.logits(items))
                         for name, items in perturb(model.spec.kind, head.items).items()}

        def measure(c: Classifier) -> dict[str, float]:
            return _measure(c, data, reference)

    with steps.step(f"passes on {model.spec.name}: {', '.join(job.applying) or 'none apply'}") as update:
        classifier, pass_records = run_passes(model, job.pass_names, measure, job.pass_options, work, update,
                                              named=job.config.passes is not None)
    for record in pass_records:
        if "sizing" in record:
            steps.note(f"  vocabulary sized: {_sizing_line(record)}")
        if "not_run" in record:
            steps.note(f"  {record['name']} not run: {record['not_run']}")
    gates = []
    if data is not None and any(r["changed"] and not r["exact"] for r in pass_records):
        with steps.step("pruning fidelity: the pruned PyTorch model against the original") as update:
            pruning = next((r for r in pass_records if r["changed"] and not r["exact"]), None)
            pruned = logits_to_file(classifier, data, work / "pruned.f32", update)
            gates.append(_pruning_gate(model, classifier, data, reference, pruned, job.config, pruning))
            reference = pruned  # runtime parity: each bundle against the model it was built from
            perturbed = {name: (items, classifier.logits(items)) for name, (items, _) in perturbed.items()}
        steps.note(f"  pruning fidelity: {gates[0]['status']} ({gates[0]['reason']})")
    if data is not None and isinstance(classifier, TextClassifier) and any(t.name == "onnx" for t, _ in job.bundles):
        with steps.step("tokenization: the browser's Tokenizers.js against Python's tokenizers"):
            gates.append(javascript_tokenization_gate(classifier.encoder(), classifier.tokenizer_file,
                                                      (samples.items for _, samples in data.chunks())))
        steps.note(_tokenization_line(gates[-1]))
    if data is None:
        return classifier, pass_records, gates, None
    return classifier, pass_records, gates, _verification(classifier, data, reference, head, perturbed, work)


def _mark(status: str) -> str:
    """The progress line's mark for a gate's or a bundle's status."""
    return {"pass": "✓", "skipped": "–"}.get(status, "✗")


def _tokenization_line(gate: dict[str, Any]) -> str:
    """One line on the tokenization gate (its full reason is in the summary table and report)."""
    counts = f"{gate['texts_exact']} of {gate['texts']} texts with Python's ids" if gate["texts"] else "not checked"
    return f"  {_mark(gate['status'])} {gate['name']}: {gate['status']} ({counts})"


def _sizing_line(record: dict[str, Any]) -> str:
    """One line on how vocabulary pruning met its size target."""
    sizing = record["sizing"]
    return (f"{record['vocab_before']:,} -> {record['vocab_after']:,} pieces for {sizing['target']} on "
            f"{sizing['heldout_texts']:,} held-out texts: {'met' if sizing['met'] else 'NOT met'} "
            f"({sizing['reached']:.2%})")


def _measure(classifier: Classifier, data: VerificationData, reference: ArrayFile) -> dict[str, float]:
    """How far a pass moved the model: max |Δlogit|, the largest logit, top-1 agreement."""
    parity, biggest = ParityAccumulator(Thresholds(max_abs_diff=None)), 0.0
    for start, samples, logits in model_logits(classifier, data):
        before = reference.read(start, start + len(samples))
        parity.add(before, logits)
        biggest = max(biggest, float(np.abs(before).max()))
    result = parity.result()
    return {"max_abs_diff": result.max_abs_diff, "max_abs_logit": biggest, "agreement": result.agreement}


def _pruning_gate(model: Classifier, pruned: Classifier, data: VerificationData, original: ArrayFile,
                  pruned_logits: ArrayFile, config: ConvertConfig, pruning: dict[str, Any] | None) -> dict[str, Any]:
    """The pruning fidelity gate: the pruned model against the original on every verification text
    (``pruning``: the pass's record, for advice)."""
    gate = PruningFidelity(model, pruned, config.min_pruning_agreement)
    for start, samples in data.chunks():
        stop = start + len(samples)
        gate.add(samples.items, samples.labels, original.read(start, stop), pruned_logits.read(start, stop))
    return gate.result(pruning)


def _verification(classifier: Classifier, data: VerificationData, reference: ArrayFile, head: Samples,
                  perturbed: dict[str, tuple[list, np.ndarray]], work: Path) -> Verification:
    """Labels and input digests of every verification sample in files."""
    labels = ArrayFile(work / "labels.i64", np.int64)
    digests = input_digests(data, classifier.encoder(), work / "digests.u8", labels)
    return Verification(data, reference, labels, digests, head, perturbed)


def _bundle(target: Target, precision: str, job: _Job, classifier: Classifier, artifacts: Artifacts, staging: Path,
            verification: Verification | None, pass_records: list[dict[str, Any]], gates: list[dict[str, Any]],
            steps: Steps) -> BundleRecord:
    """Build and verify one bundle; one target's failure is recorded and the others still build."""
    folder = staging / f"{target.name}-{precision}"
    try:
        with steps.step(f"bundle {folder.name}: build and verify in {target.runtime}", mark=False) as update:
            record = _build_one(target, precision, job.config, classifier, artifacts, folder, verification,
                                pass_records, gates, update)
    except Exception as e:
        log.debug("bundle %s failed", folder.name, exc_info=True)
        shutil.rmtree(folder, ignore_errors=True)
        record = BundleRecord(folder.name, target.name, precision, "error", _cause(e))
    steps.note(f"  {_mark(record.status)} {record.name}: {record.status} ({record.reason})")
    return record


def _cause(e: Exception) -> str:
    """A bundle's failure in words: edgesdk's own message, a full disk, or the raw error."""
    if isinstance(e, EdgeSDKError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"writing the bundle failed ({e.strerror}): free disk space (or raise the file size limit) and run again"
    return f"{type(e).__name__}: {e}"


def _calibration_plan(model: Classifier, config: ConvertConfig) -> CalibrationPlan | None:
    """Check the calibration inputs before any work; None when no int8 bundle is asked for."""
    RANGE_METHODS.get(config.range_method)
    if "int8" not in config.precisions:
        return None
    if config.calibration is None:
        raise InputError("int8 bundles need calibration data: pass --calibration FILE (a few hundred samples of "
                         "the same kind as --verify-on; labels optional)")
    count = config.calibration_samples
    if count < MIN_SAMPLES:
        raise InputError(f"calibration_samples must be at least {MIN_SAMPLES}, not {count}")
    samples = read_samples(config.calibration, model.spec)
    if len(samples) < MIN_SAMPLES:
        raise InputError(f"{config.calibration} holds {len(samples)} samples; int8 calibration needs at least "
                         f"{MIN_SAMPLES} (a few hundred is typical)")
    n = min(count, len(samples))
    int8 = config.thresholds("int8")
    return CalibrationPlan(Samples(samples.items[:n], samples.labels[:n], samples.source), config.range_method,
                           Budget(int8.min_agreement, int8.max_accuracy_drop or 0.0, int8.confidence or 0.95),
                           LayerChoice(config.float_layers, config.int8_layers))
