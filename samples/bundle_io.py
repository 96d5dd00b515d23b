"""Read an edgesdk bundle with numpy and tokenizers only: shared by the sample apps.

Copy this file and one ``*_app.py`` into an app: nothing here imports torch or edgesdk.
It checks every file's sha256 and refuses paths that leave the bundle, encodes text with
the bundle's tokenizer.json and images as uint8 arrays, and runs the golden self-test.
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


class SampleBundle:
    """A bundle folder whose files all match the sha256 its manifest lists."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        for name, info in self.manifest["files"].items():
            digest = hashlib.sha256(self.member(name).read_bytes()).hexdigest()
            if digest != info["sha256"]:
                sys.exit(f"{self.path / name}: sha256 mismatch: the bundle was altered")
        self.spec = self.manifest["spec"]
        self.inputs = [t["name"] for t in self.spec["inputs"]]
        self.labels = self.spec["labels"]

    def member(self, name: str) -> Path:
        path = (self.path / name).resolve()
        if not path.is_relative_to(self.path) or not path.is_file():
            sys.exit(f"{name}: not a file inside the bundle: refused")
        return path

    @property
    def model(self) -> Path:
        return self.member(self.manifest["model_file"])

    def encode(self, items: list[str]) -> Rows:
        """Text lines, or paths of image files, as one row of named arrays each."""
        pre = self.spec["preprocessing"]
        if self.spec["kind"] == "text":
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.member(pre["tokenizer"])))
            tokenizer.no_padding()
            tokenizer.enable_truncation(pre["max_length"])
            fields = [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                      for e in tokenizer.encode_batch(items)]
            return [{n: np.asarray(f[n], np.int64) for n in self.inputs} for f in fields]
        from PIL import Image

        rows = []
        for item in items:
            with Image.open(item) as image:
                pixels = np.asarray(image.convert("L" if pre["channels"] == 1 else "RGB"), np.uint8)
            rows.append({self.inputs[0]: pixels.reshape(*pixels.shape[:2], pre["channels"])})
        return rows

    def self_test(self, run: Callable[[SampleBundle, Rows], np.ndarray]) -> None:
        """Run the golden samples; exit when this runtime drifted from the conversion's outputs."""
        golden = self.manifest.get("golden")
        if not golden:
            return
        with np.load(self.member(golden["file"]), allow_pickle=False) as z:
            rows = [{n: z[f"{i}/{n}"] for n in self.inputs} for i in range(golden["samples"])]
            expected, top1 = z["pytorch_logits"], z["bundle_top1"]
        logits = run(self, rows)
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
    if not args.no_self_test:
        bundle.self_test(run)
    logits = run(bundle, bundle.encode(args.inputs))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for item, p in zip(args.inputs, probs):
        print(json.dumps({"input": item, "label": bundle.labels[int(p.argmax())],
                          "probabilities": dict(zip(bundle.labels, map(float, p)))}))
