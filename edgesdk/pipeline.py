"""The conversion pipeline: passes on the model, then every target x precision, verified.

``convert`` validates everything it can before writing, builds each bundle in a staging
folder, runs it in its own runtime against PyTorch on the verification data, writes the
report, and moves the whole output into place at the end.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .bundle import staged_output, write_arrays, write_manifest, write_npz
from .calibration import MIN_SAMPLES, RANGE_METHODS, Budget, Calibration, Judge, LayerChoice, calibrate
from .converters import PASSES, run_passes
from .data import Samples, read_samples
from .errors import EdgeSDKError, InputError
from .fidelity import DEFAULT_MIN_PRUNING_AGREEMENT, pruning_fidelity
from .models import Classifier, TextClassifier
from .parity import ParityResult, Thresholds, compare, default_thresholds, skipped
from .progress import Steps
from .report import write_report
from .robustness import perturb
from .runtime.bundle import Bundle
from .runtime.encode import row_digest
from .targets import TARGETS, Target

__all__ = ["convert", "ConversionResult", "BundleRecord", "Verification", "REFERENCE_FILE"]

REFERENCE_FILE = "reference.safetensors"
ROBUSTNESS_SAMPLES = 200  # the first verification samples are perturbed (upper case, typo, noise...)
GOLDEN_FILE = "golden.npz"


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
    logits: np.ndarray | None = None
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
    if "recipes_tried" in notes:  # the runtime's own quantizer; edgesdk's float layers do not apply
        return {"what": notes["int8"], "recipes_tried": notes["recipes_tried"], "judged_on": notes.get("judged_on")}
    calibration = notes.get("calibration", {})
    return {"what": notes["int8"], "method": calibration.get("method"),
            "quantized_layers": calibration.get("quantized_layers"),
            "quantizable_layers": calibration.get("quantizable_layers"),
            "float_layers": [{k: f[k] for k in ("layer", "local_snr_db", "forced")}
                             for f in calibration.get("float_layers", [])],
            "judged_on": calibration.get("judged_on"), "judged_effect": calibration.get("judged_effect"),
            "smoothing": calibration.get("smoothing"),
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
        model-level gate (pruning fidelity) passed."""
        return all(b.status in ("pass", "skipped") for b in self.bundles) and all(
            g["status"] == "pass" for g in self.gates)


@dataclass
class Verification:
    """Encoded verification samples and PyTorch's logits for them, and the same for each
    small perturbation of them (``edgesdk.robustness``)."""

    samples: Samples
    rows: list
    reference: np.ndarray
    perturbed: dict[str, tuple[list, np.ndarray]] = field(default_factory=dict)

    @cached_property
    def digests(self) -> np.ndarray:
        """One 32-byte digest per row (computed once, shared by every bundle)."""
        return np.frombuffer(b"".join(row_digest(r) for r in self.rows), dtype=np.uint8).reshape(-1, 32)


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
                 calibration: CalibrationPlan | None = None, judge: Judge | None = None) -> None:
        from .converters.export import ONNX_OPSET

        self.classifier = classifier
        self.workdir = workdir
        self.steps = steps
        self.onnx_opset = ONNX_OPSET
        self.plan = calibration
        self.judge = judge
        self._onnx: Path | None = None
        self._calibration: Calibration | None = None

    def onnx_fp32(self) -> Path:
        if self._onnx is None:
            from .converters.export import export_onnx

            with self.steps.step("export to ONNX (torch.export)"):
                self._onnx = export_onnx(self.classifier, self.workdir / "model.fp32.onnx")
        return self._onnx

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
    """Batch-1 latency percentiles on this machine (run-dependent: report only)."""
    times = []
    with bundle.runner() as runner:
        for i in range(runs + 3):
            _, feeds = next(bundle.encoder.batches([rows[i % len(rows)]], 1))
            start = time.perf_counter()
            runner.infer(feeds)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def _build_one(target: Target, precision: str, classifier: Classifier, artifacts: Artifacts,
               folder: Path, verification: Verification | None, thresholds: Thresholds,
               passes: list[dict[str, Any]]) -> BundleRecord:
    name = f"{target.name}-{precision}"
    folder.mkdir()
    notes = target.build(artifacts, precision, folder)
    if isinstance(classifier, TextClassifier):
        shutil.copyfile(classifier.tokenizer_file, folder / classifier.spec.preprocessing.tokenizer)
    if verification is not None:
        write_arrays(folder / REFERENCE_FILE, {
            "digests": verification.digests,
            "logits": verification.reference,
            "labels": verification.samples.labels,
        })
    manifest = {
        "format": "edgesdk-bundle",
        "name": f"{classifier.spec.name}-{name}",
        "target": target.name,
        "runtime": target.runtime,
        "precision": precision,
        "model_file": target.model_file,
        "spec": classifier.spec.to_dict(),
        "build": notes,
        "passes": passes,
        "reference": {"file": REFERENCE_FILE, "samples": len(verification.rows)} if verification else None,
        "versions": _versions(type(target)),
    }
    write_manifest(folder, {**manifest, "parity": skipped("pending", thresholds).to_dict()})
    bundle = Bundle.open(folder)
    record = BundleRecord(name, target.name, precision, "skipped", "", path=folder, notes=notes)
    reason = target.parity_skip_reason()
    if verification is None:
        reason = "no verification data was given (pass verify_on / --verify-on)"
    if reason:
        record.parity = skipped(reason, thresholds)
    else:
        logits = bundle.run_rows(verification.rows)["logits"]
        record.parity = compare(verification.reference, logits, thresholds, verification.samples.labels)
        manifest["golden"] = _write_golden(folder, verification, logits, thresholds)
        record.robustness = _robustness(bundle, verification, logits)
        calibration = notes.get("calibration", {})
        if calibration.get("met_budget") is False:
            record.parity = replace(record.parity, status="fail", reason=(
                f"edgesdk's calibration could not meet the int8 budget on {calibration['judged_on']} "
                f"({calibration['judge_samples']} samples) with any float layers it tried; this is the best "
                f"configuration found ({record.parity.reason})"))
        record.logits = logits
        record.latency_ms = _latency(bundle, verification.rows)
    record.status, record.reason = record.parity.status, record.parity.reason
    write_manifest(folder, {**manifest, "parity": record.parity.to_dict()})
    record.bytes = sum(p.stat().st_size for p in folder.iterdir())
    return record


def _robustness(bundle: Bundle, verification: Verification, logits: np.ndarray) -> dict[str, dict[str, float]]:
    """Per perturbation: agreement with PyTorch, and how often each changed its answer."""
    out = {}
    for name, (rows, reference) in verification.perturbed.items():
        moved = bundle.run_rows(rows)["logits"].argmax(1)
        before = verification.reference[:len(rows)].argmax(1)
        out[name] = {"samples": len(rows), "agreement": float((moved == reference.argmax(1)).mean()),
                     "pytorch_changed": float((reference.argmax(1) != before).mean()),
                     "bundle_changed": float((moved != logits[:len(rows)].argmax(1)).mean())}
    return out


def _write_golden(folder: Path, verification: Verification, logits: np.ndarray, thresholds: Thresholds,
                  count: int = 4) -> dict[str, Any]:
    """Store a few verification samples (texts or pixels) with their encoded inputs and PyTorch's
    logits for the loader's self-test, which encodes them again with the bundle's own tokenizer.

    The tolerance is the fp32 threshold, or twice the bundle's own distance from PyTorch on
    these samples (int8), whichever is larger.
    """
    k = min(count, len(verification.rows))
    arrays = {f"{i}/{name}": value for i in range(k) for name, value in verification.rows[i].items()}
    if verification.samples.items and isinstance(verification.samples.items[0], str):
        arrays["texts"] = np.array(verification.samples.items[:k], dtype=str)
    reference = verification.reference[:k]
    observed = float(np.abs(logits[:k] - reference).max())
    write_npz(folder / GOLDEN_FILE, {"pytorch_logits": reference, "bundle_top1": logits[:k].argmax(1), **arrays})
    return {"file": GOLDEN_FILE, "samples": k,
            "tolerance": max(thresholds.max_abs_diff or 0.0, 2 * observed, 1e-5)}


def _plan(targets: list[str], precisions: list[str]) -> list[tuple[Target, str]]:
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


def convert(
    model: Classifier,
    out: str | Path,
    targets: list[str] | tuple[str, ...] = ("onnx",),
    precisions: list[str] | tuple[str, ...] = ("fp32",),
    verify_on: str | Path | None = None,
    passes: list[str] | None = None,
    thresholds: dict[str, Thresholds] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    corpus: list[str | Path] | None = None,
    pass_options: dict[str, dict[str, Any]] | None = None,
    calibration: str | Path | None = None,
    range_method: str = "mse",
    calibration_samples: int = 300,
    float_layers: list[str] | tuple[str, ...] = (),
    int8_layers: list[str] | tuple[str, ...] = (),
    min_pruning_agreement: float = DEFAULT_MIN_PRUNING_AGREEMENT,
) -> ConversionResult:
    """Convert ``model`` into one verified bundle per target x precision under ``out``.

    ``passes`` defaults to every registered pass that applies; ``corpus`` (text files, one
    document per line) turns on vocabulary pruning; ``pass_options`` maps a pass name to
    its keyword arguments; ``thresholds`` maps a precision to its parity thresholds.
    int8 bundles are calibrated on the first ``calibration_samples`` of ``calibration``
    (same formats as ``verify_on``) with ``range_method``; the int8 thresholds are also
    the budget the float fallbacks are chosen for, judged on the verification data.
    ``float_layers`` / ``int8_layers`` force layers (module names or shell patterns) to
    stay float or int8. When a pass that is not exact (vocabulary pruning) changed the model,
    bundles are compared with the rewritten PyTorch model and the rewrite with the original,
    on its own gate (``min_pruning_agreement``, judged on its 95% lower bound).
    """
    if not isinstance(model, Classifier):
        raise InputError(f"convert() takes an edgesdk TextClassifier or ImageClassifier, not {type(model).__name__}")
    bundles = _plan(list(targets), list(precisions))
    pass_names = list(PASSES.names()) if passes is None else list(passes)
    options = {name: dict(kwargs) for name, kwargs in (pass_options or {}).items()}
    if corpus:
        options.setdefault("prune_vocabulary", {})["corpus"] = list(corpus)
    for name in [*pass_names, *options]:
        PASSES.get(name)(**options.get(name, {}))  # unknown names and bad options fail before any work
    samples = read_samples(verify_on, model.spec) if verify_on is not None else None
    plan = _calibration_plan(model, [p for _, p in bundles], calibration, range_method, calibration_samples,
                             (thresholds or {}).get("int8") or default_thresholds("int8"),
                             LayerChoice(tuple(float_layers), tuple(int8_layers)))
    steps = Steps(quiet)
    inputs = [*model.input_paths(), *(p for p in (verify_on, calibration) if p is not None), *(corpus or []),
              *(v for o in options.values() for k, v in o.items() if k in ("heldout", "forced_tokens") and v)]
    with staged_output(out, overwrite, inputs) as staging, tempfile.TemporaryDirectory(prefix="edgesdk-work-") as work:
        reference = measure = None
        if samples is not None:
            with steps.step(f"PyTorch reference on {len(samples)} samples and {model.spec.kind} perturbations"):
                reference = model.logits(samples.items)
                perturbed = {name: (items, model.logits(items)) for name, items in
                             perturb(model.spec.kind, samples.items[:ROBUSTNESS_SAMPLES]).items()}

            def measure(c: Classifier) -> dict[str, float]:
                logits = c.logits(samples.items)
                diff = np.abs(logits - reference)
                return {"max_abs_diff": float(diff.max()), "max_abs_logit": float(np.abs(reference).max()),
                        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean())}

        with steps.step(f"passes on {model.spec.name}: {', '.join(pass_names) or 'none'}") as update:
            classifier, pass_records = run_passes(model, pass_names, measure, options, Path(work), update)
        gates = []
        if samples is not None and any(r["changed"] and not r["exact"] for r in pass_records):
            with steps.step("pruning fidelity: the pruned PyTorch model against the original"):
                pruned = classifier.logits(samples.items)
                heldout = next((r["heldout"] for r in pass_records if "heldout" in r), None)
                gates.append(pruning_fidelity(model, classifier, samples.items, samples.labels, reference, pruned,
                                              min_pruning_agreement, heldout))
                reference = pruned  # runtime parity: each bundle against the model it was built from
                perturbed = {name: (items, classifier.logits(items)) for name, (items, _) in perturbed.items()}
            steps.note(f"  pruning fidelity: {gates[0]['status']} ({gates[0]['reason']})")
        verification = None
        if samples is not None:
            encoder = classifier.encoder()
            encoded = {name: (encoder.encode(items), logits) for name, (items, logits) in perturbed.items()}
            verification = Verification(samples, encoder.encode(samples.items), reference, encoded)
        judge = None if verification is None else Judge(verification.rows, verification.samples.labels,
                                                         f"the verification data ({verification.samples.source})")
        artifacts = Artifacts(classifier, Path(work), steps, plan, judge)
        records = []
        for target, precision in bundles:
            thr = (thresholds or {}).get(precision) or default_thresholds(precision)
            folder = staging / f"{target.name}-{precision}"
            try:
                with steps.step(f"bundle {folder.name}: build and verify in {target.runtime}"):
                    record = _build_one(target, precision, classifier, artifacts, folder,
                                        verification, thr, pass_records)
            except Exception as e:  # one target's failure is reported, the others still build
                shutil.rmtree(folder, ignore_errors=True)
                cause = _cause(e)
                record = BundleRecord(folder.name, target.name, precision, "error", cause)
            records.append(record)
            steps.note(f"  {record.name}: {record.status} ({record.reason})")
        with steps.step("report"):
            report = write_report(staging, classifier.spec, records, pass_records, verification, gates)
    out = Path(out).absolute()
    for r in records:
        if r.path is not None:
            r.path = out / r.path.name
    return ConversionResult(out, classifier.spec.name, records, pass_records, out / "report.html", report, gates)


def _cause(e: Exception) -> str:
    """A bundle's failure in words: edgesdk's own message, a full disk, or the raw error."""
    if isinstance(e, EdgeSDKError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"writing the bundle failed ({e.strerror}): free disk space (or raise the file size limit) and run again"
    return f"{type(e).__name__}: {e}"


def _calibration_plan(model: Classifier, precisions: list[str], path: str | Path | None, method: str, count: int,
                      int8: Thresholds, choice: LayerChoice) -> CalibrationPlan | None:
    """Check the calibration inputs before any work; None when no int8 bundle is asked for."""
    RANGE_METHODS.get(method)
    if "int8" not in precisions:
        return None
    if path is None:
        raise InputError("int8 bundles need calibration data: pass --calibration FILE (a few hundred samples of "
                         "the same kind as --verify-on; labels optional)")
    if count < MIN_SAMPLES:
        raise InputError(f"calibration_samples must be at least {MIN_SAMPLES}, not {count}")
    samples = read_samples(path, model.spec)
    if len(samples) < MIN_SAMPLES:
        raise InputError(f"{path} holds {len(samples)} samples; int8 calibration needs at least {MIN_SAMPLES} "
                         "(a few hundred is typical)")
    n = min(count, len(samples))
    return CalibrationPlan(Samples(samples.items[:n], samples.labels[:n], samples.source), method,
                           Budget(int8.min_agreement, int8.max_accuracy_drop or 0.0, int8.confidence or 0.95), choice)
