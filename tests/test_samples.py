"""The sample apps load the demo's bundles with only their runtime, numpy and tokenizers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_sample_app
from PIL import Image

from edgesdk.runtime import load_bundle

APPS = {"onnx": "onnxruntime_app.py", "openvino": "openvino_app.py", "tflite": "litert_app.py"}
TEXTS = ["how much does a good steak cost", "who wrote war and peace", "🙂 completely unrelated"]


@pytest.mark.parametrize("target", list(APPS))
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sample_apps_match_the_edgesdk_loader(demo_out, tmp_path, target, precision):
    images = np.load(demo_out / "data" / "digits-val.npz")["images"][:3]
    files = []
    for i, pixels in enumerate(images):
        Image.fromarray(pixels[..., 0]).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    for kind, inputs, samples in (("text", TEXTS, TEXTS), ("image", files, list(images))):
        bundle = demo_out / kind / f"{target}-{precision}"
        printed = run_sample_app(APPS[target], bundle, inputs)
        expected = load_bundle(bundle).classify(samples)
        assert [p["label"] for p in printed] == [e.label for e in expected]
        for p, e in zip(printed, expected):
            assert max(abs(p["probabilities"][k] - v) for k, v in e.probabilities.items()) < 1e-4


def test_self_test_runs_golden_samples_and_catches_drift(demo_out, tmp_path):
    import shutil

    from edgesdk.errors import BundleError

    bundle = load_bundle(demo_out / "text" / "onnx-int8", self_test=True)
    result = bundle.self_test()
    assert result.ok and result.samples == 4 and result.seconds < 1.0
    # a bundle whose golden outputs no longer match (here: another model file, re-signed) is refused
    tampered = tmp_path / "bundle"
    shutil.copytree(demo_out / "text" / "onnx-fp32", tampered)
    shutil.copyfile(demo_out / "text" / "onnx-int8" / "model.onnx", tampered / "model.onnx")
    from edgesdk.bundle import write_manifest

    manifest = json.loads((tampered / "manifest.json").read_text())
    write_manifest(tampered, {k: v for k, v in manifest.items() if k not in ("files", "schema_version")})
    load_bundle(tampered)  # files are consistent again: the sha256 check alone passes
    with pytest.raises(BundleError, match="self-test failed"):
        load_bundle(tampered, self_test=True)
