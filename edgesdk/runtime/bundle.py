"""Open a bundle and trust nothing: schema, paths, sha256 of every file, no extra files."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import BundleError
from ..spec import ModelSpec
from .encode import Encoder, encoder_for
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
]

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_MAX_MANIFEST_BYTES = 4 << 20


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
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle folder")
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{path} is missing: not an edgesdk bundle (convert the model first)")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes: refused")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version!r}; this edgesdk reads {SCHEMA_VERSION}: "
            "rebuild the bundle or upgrade edgesdk"
        )
    for key in ("target", "precision", "model_file", "spec", "files"):
        if key not in manifest:
            raise BundleError(f"{path} lacks the field {key!r}; the bundle is damaged")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{path}: 'files' must map file names to their sha256")
    return manifest


def _check_files(root: Path, files: dict[str, Any]) -> None:
    for name, entry in sorted(files.items()):
        path = safe_member(root, name)
        if not path.is_file():
            raise BundleError(f"bundle file {name!r} is missing from {root}")
        want = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(want, str):
            raise BundleError(f"manifest.json has no sha256 for {name!r}")
        if file_sha256(path) != want:
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
        self.model_path = safe_member(path, manifest["model_file"])
        self._encoder: Encoder | None = None

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        root = Path(path)
        manifest = _read_manifest(root)
        _check_files(root, manifest["files"])
        return cls(root, manifest)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = encoder_for(self.spec, self.path)
        return self._encoder

    def runner(self) -> Runner:
        from ..targets import TARGETS

        return TARGETS.get(self.target).runner(self.model_path, self.spec)

    def run_rows(self, rows: list, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Run encoded rows; returns each output stacked over the rows, in order."""
        out: dict[str, list] = {}
        order: list[int] = []
        with self.runner() as runner:
            for idx, feeds in self.encoder.batches(rows, batch_size):
                for name, value in runner.infer(feeds).items():
                    out.setdefault(name, []).append(value)
                order.extend(idx)
        inverse = np.argsort(np.asarray(order))
        return {name: np.concatenate(parts)[inverse] for name, parts in out.items()}

    def self_test(self) -> SelfTest:
        """Run the golden samples stored at conversion and compare with PyTorch's logits."""
        golden = self.manifest.get("golden")
        if not golden:
            raise BundleError(f"{self.path} carries no golden samples (converted without verification data)")
        start = time.perf_counter()
        names = [t.name for t in self.spec.inputs]
        with np.load(safe_member(self.path, golden["file"]), allow_pickle=False) as z:
            rows = [{n: z[f"{i}/{n}"] for n in names} for i in range(golden["samples"])]
            expected, top1 = z["pytorch_logits"], z["bundle_top1"]
        logits = self.run_rows(rows)["logits"]
        diff = float(np.abs(logits - expected).max())
        ok = diff <= golden["tolerance"] and bool((logits.argmax(1) == top1).all())
        return SelfTest(ok, len(rows), diff, golden["tolerance"], time.perf_counter() - start)

    def classify(self, samples: list, batch_size: int = 32) -> list[Prediction]:
        """Classify text lines or uint8 HWC images with nothing but the runtime."""
        probs = self.run_rows(self.encoder.encode(samples), batch_size)["probabilities"]
        labels = self.spec.labels
        return [
            Prediction(labels[int(p.argmax())], int(p.argmax()), dict(zip(labels, map(float, p))))
            for p in probs
        ]


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
