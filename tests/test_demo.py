"""The built-in example end to end: bundles pass `edgesdk verify` in a fresh process."""

from __future__ import annotations

import json

from conftest import run_cli

from edgesdk.runtime import file_sha256


def test_demo_bundles_pass_in_their_runtime(demo_out):
    for kind in ("text", "image"):
        report = json.loads((demo_out / kind / "report.json").read_text())
        (bundle,) = report["models"][0]["bundles"]
        assert bundle["status"] == "pass", bundle
        assert bundle["parity"]["max_abs_diff"] <= 1e-4
        assert bundle["parity"]["agreement"] == 1.0
        assert (demo_out / kind / "report.html").stat().st_size > 1000
    assert "data:image/png;base64" in (demo_out / "report.html").read_text()


def test_verify_in_fresh_process_from_stored_reference(demo_out):
    for kind, data in (("text", "topics-val.tsv"), ("image", "digits-val.npz")):
        r = run_cli("verify", str(demo_out / kind / "onnx-fp32"), "--data", str(demo_out / "data" / data),
                    block_torch=True)
        assert r.returncode == 0, r.stderr
        assert ": pass:" in r.stdout


def test_verify_against_model_recomputes_reference(demo_out):
    r = run_cli("verify", str(demo_out / "image" / "onnx-fp32"), "--data", str(demo_out / "data" / "digits-val.npz"),
                "--model", "edgesdk.demo:digits_classifier", "--weights",
                str(demo_out / "models" / "digits-cnn.safetensors"))
    assert r.returncode == 0, r.stderr


def test_verify_exit_code_gates_on_thresholds(demo_out):
    r = run_cli("verify", str(demo_out / "text" / "onnx-fp32"), "--data", str(demo_out / "data" / "topics-val.tsv"),
                "--max-abs-diff", "0")
    assert r.returncode == 1
    assert "fail" in r.stdout


def test_demo_is_deterministic(demo_out, tmp_path):
    from edgesdk.demo import run_demo

    run_demo(tmp_path / "again", quiet=True)
    for kind in ("text", "image"):
        for name in ("model.onnx", "reference.safetensors", "tokenizer.json"):
            first = demo_out / kind / "onnx-fp32" / name
            if first.exists():
                assert file_sha256(first) == file_sha256(tmp_path / "again" / kind / "onnx-fp32" / name), name
