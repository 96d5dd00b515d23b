"""Read an edgesdk bundle with numpy and tokenizers only: shared by the sample apps.

Copy this file, ``manifest.schema.json`` and one ``*_app.py`` into an app: nothing here
imports torch or edgesdk (jsonschema validates the manifest). It validates the manifest
against the schema, checks every file's size and sha256, refuses paths that leave the bundle
and files the manifest does not list, encodes text with the bundle's tokenizer.json and
images as uint8 arrays, and runs the golden self-test from the stored texts or pixels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

Rows = list[dict[str, np.ndarray]]


SCHEMA = Path(__file__).resolve().with_name("manifest.schema.json")
MAX_MANIFEST_BYTES = 4 << 20


def _refuse(message: str) -> None:
    sys.exit(f"refused: {message}")


def _read_manifest(folder: Path) -> dict:
    import jsonschema

    path = folder / "manifest.json"
    if not folder.is_dir() or not path.is_file() or path.is_symlink():
        _refuse(f"{folder} is not a bundle folder (no manifest.json)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        _refuse(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _refuse(f"{path} is not valid JSON ({str(e)[:100]})")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(manifest))
    if error is not None:
        where = ".".join(map(str, error.absolute_path)) or "(top level)"
        _refuse(f"{path}: field {where}: {error.message[:200]}")
    return manifest


class SampleBundle:
    """A bundle folder whose files all match the size and sha256 its manifest lists."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.manifest = _read_manifest(self.path)
        files = self.manifest["files"]
        for name, info in files.items():
            member = self.member(name)
            if member.stat().st_size != info["bytes"]:
                _refuse(f"{name}: size differs from the manifest: the bundle was altered")
            h = hashlib.sha256()
            with open(member, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != info["sha256"]:
                _refuse(f"{name}: sha256 mismatch: the bundle was altered")
        for extra in self.path.rglob("*"):
            rel = extra.relative_to(self.path).as_posix()
            if extra.is_symlink() or (extra.is_file() and rel not in files and rel != "manifest.json"):
                _refuse(f"{rel}: a file the manifest does not list")
        self.spec = self.manifest["spec"]
        self.inputs = [t["name"] for t in self.spec["inputs"]]
        self.labels = self.spec["labels"]

    def member(self, name: str) -> Path:
        """A file the manifest lists, inside the bundle."""
        if name not in self.manifest["files"]:
            _refuse(f"{name}: not listed in manifest.json")
        path = self.path / name
        if path.is_symlink() or not path.resolve().is_relative_to(self.path) or not path.is_file():
            _refuse(f"{name}: not a file inside the bundle")
        return path

    @property
    def model(self) -> Path:
        return self.member(self.manifest["model_file"])

    def encode_texts(self, items: list[str]) -> Rows:
        """Text lines as one row of named arrays each (the bundle's own tokenizer.json), or as the
        strings themselves when the model tokenizes inside its graph."""
        pre = self.spec["preprocessing"]
        if pre.get("text_input") == "string":
            return [{self.inputs[0]: np.array(item, dtype=object)} for item in items]
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(self.member(pre["tokenizer"])))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            _refuse(f"{pre['tokenizer']}: not a readable tokenizer ({str(e)[:100]})")
        tokenizer.no_padding()
        tokenizer.enable_truncation(pre["max_length"])
        fields = [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                  for e in tokenizer.encode_batch(items)]
        return [{n: np.asarray(f[n], np.int64) for n in self.inputs} for f in fields]

    def encode(self, items: list[str]) -> Rows:
        """Text lines, or paths of image files, as one row of named arrays each."""
        pre = self.spec["preprocessing"]
        if self.spec["kind"] == "text":
            return self.encode_texts(items)
        from PIL import Image, UnidentifiedImageError

        rows = []
        for item in items:
            try:
                with Image.open(item) as image:
                    pixels = np.asarray(image.convert("L" if pre["channels"] == 1 else "RGB"), np.uint8)
            except (OSError, UnidentifiedImageError) as e:
                sys.exit(f"{item}: not a readable image ({e})")
            rows.append({self.inputs[0]: pixels.reshape(*pixels.shape[:2], pre["channels"])})
        return rows

    def self_test(self, run: Callable[[SampleBundle, Rows], np.ndarray]) -> None:
        """Run the golden samples; exit when this runtime drifted from the conversion's outputs."""
        golden = self.manifest.get("golden")
        if not golden:
            return
        try:
            with np.load(self.member(golden["file"]), allow_pickle=False) as z:
                stored = [{n: z[f"{i}/{n}"] for n in self.inputs} for i in range(golden["samples"])]
                texts = [str(t) for t in z["texts"]] if self.spec["kind"] == "text" else None
                expected, top1 = z["pytorch_logits"], z["bundle_top1"]
        except (OSError, ValueError, KeyError) as e:
            _refuse(f"{golden['file']}: not a valid golden file ({str(e)[:100]})")
        rows = self.encode_texts(texts) if texts is not None else stored
        for row, want in zip(rows, stored):
            if any(row[n].shape != want[n].shape or (row[n] != want[n]).any() for n in self.inputs):
                _refuse(f"{self.spec['preprocessing']['tokenizer']} does not reproduce the golden token ids")
        logits = run(self, rows)
        if logits.shape != expected.shape:
            _refuse(f"the model gives logits of shape {logits.shape}, the golden file {expected.shape}")
        diff = float(np.abs(logits - expected).max())
        if diff > golden["tolerance"] or (logits.argmax(1) != top1).any():
            sys.exit(f"self-test failed: |logit diff| {diff:.3g} > {golden['tolerance']:.3g} on golden samples")


def bilinear_resize(image: np.ndarray, size: list[int]) -> np.ndarray:
    """Resize H x W x C to ``size`` as float32, like torch's bilinear, align_corners=False."""
    def axis(src: int, dst: int):
        pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
        low = np.minimum(np.floor(pos).astype(np.int64), src - 1)
        return low, np.minimum(low + 1, src - 1), (pos - low).astype(np.float32)

    x = image.astype(np.float32)
    (y0, y1, wy), (x0, x1, wx) = axis(x.shape[0], size[0]), axis(x.shape[1], size[1])
    rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def main(run: Callable[[SampleBundle, Rows], np.ndarray], runtime: str) -> None:
    """Command line of every sample app: classify lines or image files, print JSON lines."""
    parser = argparse.ArgumentParser(description=f"Classify with an edgesdk bundle on {runtime} (no torch).")
    parser.add_argument("bundle")
    parser.add_argument("inputs", nargs="+", help="text lines, or image files for an image bundle")
    parser.add_argument("--no-self-test", action="store_true", help="skip the golden-sample check")
    args = parser.parse_args()
    bundle = SampleBundle(args.bundle)
    try:
        if not args.no_self_test:
            bundle.self_test(run)
        logits = run(bundle, bundle.encode(args.inputs))
    except Exception as e:  # the runtime's own error for a model file it cannot run
        sys.exit(f"{runtime} could not run {bundle.manifest['model_file']} ({type(e).__name__}: {str(e)[:200]})")
    if logits.ndim != 2 or logits.shape[1] != len(bundle.labels):
        _refuse(f"the model gives logits of shape {logits.shape} for {len(bundle.labels)} labels")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for item, p in zip(args.inputs, probs):
        print(json.dumps({"input": item, "label": bundle.labels[int(p.argmax())],
                          "probabilities": dict(zip(bundle.labels, map(float, p)))}))
