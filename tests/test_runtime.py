"""The torch-free loader: runs bundles without torch and refuses tampered or unsafe bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import BLOCK_TORCH, ROOT

from edgesdk.errors import BundleError
from edgesdk.runtime import load_bundle


def test_runtime_classifies_with_torch_blocked(demo_out):
    code = BLOCK_TORCH + f"""
import numpy as np, edgesdk.runtime as rt
text = rt.load_bundle({str(demo_out / 'text' / 'onnx-fp32')!r})
preds = text.classify(["I love pizza and pasta", "who wrote that novel?"])
print(preds[0].label, round(sum(preds[0].probabilities.values()), 4))
img = rt.load_bundle({str(demo_out / 'image' / 'onnx-fp32')!r})
data = np.load({str(demo_out / 'data' / 'digits-val.npz')!r})
p = img.classify(list(data['images'][:20]))
print(sum(int(x.label) == int(y) for x, y in zip(p, data['labels'][:20])))
assert 'torch' not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    label, total = r.stdout.split("\n")[0].split()
    assert label in ("food", "literature", "money", "movies", "science", "sports")
    assert float(total) == pytest.approx(1.0, abs=1e-4)
    assert int(r.stdout.split("\n")[1]) >= 17


def test_image_bundle_takes_any_size(demo_out):
    bundle = load_bundle(demo_out / "image" / "onnx-fp32")
    rng = np.random.default_rng(1)
    for shape in [(8, 8, 1), (3, 50, 1), (123, 7, 1)]:
        out = bundle.run_rows(bundle.encoder.encode([rng.integers(0, 256, shape, dtype=np.uint8)]))
        assert out["probabilities"].shape == (1, 10)
        assert out["top_k"][0, 0] == out["probabilities"][0].argmax()


@pytest.fixture
def bundle_copy(demo_out, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(demo_out / "image" / "onnx-fp32", dst)
    return dst


def _edit_manifest(folder, change):
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_tampered_file_is_refused_naming_it(bundle_copy):
    data = bytearray((bundle_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["../escape.onnx", "/etc/passwd", "sub/../../x", "a\\b", ""])
def test_paths_leaving_the_bundle_are_refused(bundle_copy, name):
    _edit_manifest(bundle_copy, lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError):
        load_bundle(bundle_copy)


def test_symlink_out_of_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.move(bundle_copy / "model.onnx", outside)
    (bundle_copy / "model.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="model.onnx"):
        load_bundle(bundle_copy)


def test_extra_missing_and_schema(bundle_copy):
    (bundle_copy / "payload.sh").write_text("echo hi")
    with pytest.raises(BundleError, match="payload.sh"):
        load_bundle(bundle_copy)
    (bundle_copy / "payload.sh").unlink()
    (bundle_copy / "reference.safetensors").unlink()
    with pytest.raises(BundleError, match="reference.safetensors"):
        load_bundle(bundle_copy)


def test_unknown_schema_and_malformed_manifest(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text('{"schema_version": 1, "files": ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)
