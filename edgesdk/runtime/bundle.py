"""Open a bundle and trust nothing: schema, paths, sizes, sha256 of every file, no extra files.

The manifest is validated against ``manifest.schema.json`` (shipped beside this module and
used by the sample apps) before any file it names is opened; every path it names must be
relative, inside the bundle and listed with its size and sha256, and is checked before use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from ..spec import ModelSpec, dtype_matches
from .encode import Encoder, encoder_for, in_row_order, row_digest
from .runner import Runner

__all__ = [
    "SelfTest",
    "MANIFEST",
    "SCHEMA_VERSION",
    "Bundle",
    "Prediction",
    "load_bundle",
    "file_sha256",
    "safe_member",
    "read_golden",
    "validate_manifest",
]

MANIFEST = "manifest.json"
SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
_MAX_MANIFEST_BYTES = 4 << 20
_MAX_GOLDEN_BYTES = 64 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_member(root: Path, name: object) -> Path:
    """The path of bundle member ``name``, refusing anything that could leave ``root``."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"manifest.json lists an invalid file name {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("~"):
        raise BundleError(f"manifest.json lists {name!r}, a path outside the bundle: refused")
    path = root / p
    if path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"bundle file {name!r} is a link or leaves the bundle: refused")
    return path


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        if not root.is_dir():
            raise BundleError(f"{root} is not a bundle folder")
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{path} is missing: not an edgesdk bundle (convert the model first)")
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes: refused")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BundleError(f"cannot read the bundle at {root}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not UTF-8 text; the bundle is damaged") from e
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged") from e
    except RecursionError:
        raise BundleError(f"{path} nests JSON too deeply: refused") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version!r}; this edgesdk reads {SCHEMA_VERSION}: "
            "rebuild the bundle with this edgesdk, or load it with the edgesdk that wrote it"
        )
    validate_manifest(manifest, path)
    return manifest


@functools.cache
def _validator():
    """The manifest schema's validator, read and checked once per process."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def validate_manifest(manifest: dict[str, Any], path: Path | str = MANIFEST) -> None:
    """Refuse a manifest that does not follow manifest.schema.json, or names a file it does not list."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(manifest))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{path}: field {where}: {error.message[:300]}; the bundle is damaged or was not "
                          "written by this edgesdk: rebuild it")
    named = {"model_file": manifest["model_file"], "golden.file": (manifest.get("golden") or {}).get("file"),
             "reference.file": (manifest.get("reference") or {}).get("file")}
    if manifest["spec"]["kind"] == "text":
        named["spec.preprocessing.tokenizer"] = manifest["spec"]["preprocessing"].get("tokenizer")
    for field_name, name in named.items():
        if name is not None and name not in manifest["files"]:
            raise BundleError(f"{path}: field {field_name} names {name!r}, which 'files' does not list with a "
                              "sha256: refused")
    _check_label_count(manifest["spec"], path)


def _check_label_count(spec: dict[str, Any], path: Path | str) -> None:
    logits = next(t for t in spec["outputs"] if t["name"] == "logits")
    classes = logits["shape"][-1] if logits["shape"] else None
    if isinstance(classes, int) and classes != len(spec["labels"]):
        raise BundleError(f"{path}: the model outputs {classes} logits but spec.labels names {len(spec['labels'])} "
                          "labels: refused")


def _check_files(root: Path, files: dict[str, Any]) -> None:
    for name, entry in sorted(files.items()):
        path = safe_member(root, name)
        if not path.is_file():
            raise BundleError(f"bundle file {name!r} is missing from {root}")
        if path.stat().st_size != entry["bytes"]:
            raise BundleError(f"bundle file {name!r} holds {path.stat().st_size} bytes, manifest.json says "
                              f"{entry['bytes']}: it was modified or damaged; rebuild or re-download the bundle")
        if file_sha256(path) != entry["sha256"]:
            raise BundleError(
                f"bundle file {name!r} does not match its sha256 in manifest.json: "
                "it was modified or damaged; rebuild or re-download the bundle"
            )
    listed = set(files) | {MANIFEST}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or (path.is_file() and rel not in listed):
            raise BundleError(f"bundle holds {rel!r}, which manifest.json does not list: refused")


@dataclass(frozen=True)
class Prediction:
    """One classified sample: the top label, its index, and every label's probability."""

    label: str
    index: int
    probabilities: dict[str, float]


class Bundle:
    """A verified bundle on disk: its manifest, spec, encoder and runner."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.spec = ModelSpec.from_dict(manifest["spec"])
        self.target: str = manifest["target"]
        self.precision: str = manifest["precision"]
        self.model_path = self.member(manifest["model_file"])
        self._encoder: Encoder | None = None

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        root = Path(path)
        manifest = _read_manifest(root)
        try:
            _check_files(root, manifest["files"])
        except OSError as e:
            raise BundleError(f"cannot read the bundle at {root}: {e.strerror or e}") from e
        return cls(root, manifest)

    def member(self, name: str) -> Path:
        """The path of a file the manifest lists (checked at open); anything else is refused."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name!r} is not listed in manifest.json: refused")
        return safe_member(self.path, name)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            tokenizer = self.spec.preprocessing.tokenizer if self.spec.kind == "text" else None
            self._encoder = encoder_for(self.spec, self.member(tokenizer) if tokenizer else None)
        return self._encoder

    def runner(self, runtime: str | None = None) -> Runner:
        """The runner of the bundle's runtime, or of ``runtime`` (a target name) run on the same
        model file as a proxy (TensorRT's ONNX in onnxruntime)."""
        from .runners import RUNNERS

        return RUNNERS.get(runtime or self.target)(self.model_path, self.spec)

    def run_rows(self, rows: list, batch_size: int = 32, runtime: str | None = None,
                 runner: Runner | None = None) -> dict[str, np.ndarray]:
        """Run encoded rows (in ``runner``, an open runner of this bundle, or in a new runner of
        ``runtime``); returns each output stacked over the rows, in order."""
        if runner is None:
            with self.runner(runtime) as opened:
                return self.run_rows(rows, batch_size, runner=opened)
        parts = [(idx, runner.infer(feeds)) for idx, feeds in self.encoder.batches(rows, batch_size)]
        result = {name: in_row_order((idx, out[name]) for idx, out in parts) for name in (parts[0][1] if parts else {})}
        logits = result.get("logits")
        if logits is None or logits.ndim != 2 or logits.shape[1] != len(self.spec.labels):
            shape = None if logits is None else logits.shape
            raise BundleError(f"{self.path}: the model returned logits of shape {shape} for {len(self.spec.labels)} "
                              "labels: the model file does not match the manifest")
        return result

    def self_test(self) -> SelfTest:
        """Run the golden samples from their stored texts or pixels (through the bundle's own
        tokenizer) and compare with PyTorch's logits."""
        golden = self.manifest.get("golden")
        if not golden:
            raise BundleError(f"{self.path} carries no golden samples (converted without verification data)")
        start = time.perf_counter()
        samples, stored_rows, expected, top1 = read_golden(self.member(golden["file"]), self.spec, golden["samples"])
        rows = self.encoder.encode(samples)
        for i, (row, stored) in enumerate(zip(rows, stored_rows)):
            if row_digest(row) != row_digest(stored):
                raise BundleError(f"{self.path}: golden sample {i} does not encode to the inputs stored at conversion: "
                                  f"{self.spec.preprocessing.tokenizer if self.spec.kind == 'text' else 'the encoder'} "
                                  "was changed; rebuild or re-download the bundle")
        logits = self.run_rows(rows)["logits"]
        if logits.shape != expected.shape:
            raise BundleError(f"{self.path}: golden logits have shape {expected.shape}, the model gives {logits.shape}")
        diff = float(np.abs(logits - expected).max())
        ok = diff <= golden["tolerance"] and bool((logits.argmax(1) == top1).all())
        return SelfTest(ok, len(rows), diff, golden["tolerance"], time.perf_counter() - start)

    def classify(self, samples: Sequence[Any] | str, batch_size: int = 32) -> list[Prediction]:
        """Classify text lines or uint8 HWC images with nothing but the runtime (one text may be
        passed as a plain string)."""
        if isinstance(samples, str) or (isinstance(samples, np.ndarray) and self.spec.kind == "image"
                                        and samples.ndim in (2, 3)):
            samples = [samples]
        if samples is None or not isinstance(samples, (Sequence, np.ndarray)):
            raise InputError(f"classify() takes a list of {'texts' if self.spec.kind == 'text' else 'images'}, "
                             f"not {type(samples).__name__}")
        if len(samples) == 0:
            return []
        probs = self.run_rows(self.encoder.encode(list(samples)), batch_size)["probabilities"]
        labels = self.spec.labels
        return [
            Prediction(labels[int(p.argmax())], int(p.argmax()), dict(zip(labels, map(float, p))))
            for p in probs
        ]


def read_golden(path: Path, spec: ModelSpec, count: int) -> tuple[list, list, np.ndarray, np.ndarray]:
    """The golden samples (texts or uint8 images), their stored encoded rows, PyTorch's logits and
    the bundle's top-1, refusing anything malformed."""
    if path.stat().st_size > _MAX_GOLDEN_BYTES:
        raise BundleError(f"{path.name} is larger than {_MAX_GOLDEN_BYTES} bytes: refused")
    names = [t.name for t in spec.inputs]
    try:
        with np.load(path, allow_pickle=False) as z:
            if spec.kind == "text":
                texts = z["texts"]
                if texts.dtype.kind != "U" or texts.shape != (count,):
                    raise ValueError(f"texts must be {count} strings, got {texts.dtype} {texts.shape}")
                samples: list = [str(t) for t in texts]
            rows = [{n: z[f"{i}/{n}"] for n in names} for i in range(count)]
            expected, top1 = z["pytorch_logits"], z["bundle_top1"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise BundleError(f"{path.name} is not a valid golden file ({str(e)[:200]}): rebuild the bundle") from e
    for row in rows:
        for n, t in zip(names, spec.inputs):
            if not dtype_matches(row[n], t.dtype) or row[n].ndim != len(t.shape) - 1:
                raise BundleError(f"{path.name}: golden input {n!r} has dtype {row[n].dtype} and shape "
                                  f"{row[n].shape}, the model takes {t.dtype} {list(t.shape)}")
    if expected.dtype.kind != "f" or expected.shape != (count, len(spec.labels)) or top1.shape != (count,):
        raise BundleError(f"{path.name}: golden logits must be {count} x {len(spec.labels)} floats")
    if spec.kind == "image":
        samples = [row[names[0]] for row in rows]
    return samples, rows, expected, top1


@dataclass(frozen=True)
class SelfTest:
    """The bundle's golden samples run again: how far from PyTorch, and whether within tolerance."""

    ok: bool
    samples: int
    max_abs_diff: float
    tolerance: float
    seconds: float


def load_bundle(path: str | Path, self_test: bool = False) -> Bundle:
    """Open ``path`` as a bundle, checking the manifest and every file's sha256.

    ``self_test`` also runs the bundle's golden samples and refuses a runtime whose outputs
    drifted from the conversion's (a different runtime build, delegate or device).
    """
    bundle = Bundle.open(path)
    if self_test:
        result = bundle.self_test()
        if not result.ok:
            raise BundleError(
                f"{bundle.path}: self-test failed: max |logit diff| {result.max_abs_diff:.3g} from PyTorch on "
                f"{result.samples} golden samples exceeds {result.tolerance:.3g}, or a top-1 changed; this "
                f"runtime does not reproduce the conversion (versions at conversion: {bundle.manifest['versions']})"
            )
    return bundle
