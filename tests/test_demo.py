"""The built-in example end to end: bundles pass `edgesdk verify` in a fresh process."""

from __future__ import annotations

import json

from conftest import run_cli

from edgesdk.runtime import file_sha256

BUNDLES = [f"{t}-{p}" for t in ("onnx", "tflite", "openvino", "tensorrt") for p in ("fp32", "int8")]


def test_demo_bundles_pass_in_their_runtime(demo_out):
    for kind in ("text", "image"):
        report = json.loads((demo_out / kind / "report.json").read_text())
        bundles = {b["name"]: b for b in report["models"][0]["bundles"]}
        assert sorted(bundles) == sorted(BUNDLES)
        for name, bundle in bundles.items():
            if name.startswith("tensorrt"):
                assert bundle["status"] == "skipped" and "GPU" in bundle["reason"], bundle
                continue
            assert bundle["status"] == "pass", bundle
            if name.endswith("fp32"):
                assert bundle["parity"]["max_abs_diff"] <= 1e-4 and bundle["parity"]["agreement"] == 1.0
            else:
                assert bundle["parity"]["agreement"] >= 0.99
            details = bundle["details"]  # what the report plots and lists for a verified bundle
            assert 0 <= details["ece_bundle"] <= 1 and 0 <= details["ece_reference"] <= 1
            assert set(details["per_class_agreement"]) <= set(report["models"][0]["labels"])
            assert len(details["disagreements"]) == min(8, round((1 - bundle["parity"]["agreement"])
                                                                  * bundle["parity"]["samples"]))
            perturbations = {"text": {"upper case", "doubled spaces", "one typo"}, "image": {"noise +-8", "shift 1 px"}}
            assert set(bundle["robustness"]) == perturbations[kind]
            assert all(0 <= r["agreement"] <= 1 for r in bundle["robustness"].values())
        assert (demo_out / kind / "report.html").stat().st_size > 1000
    assert "data:image/png;base64" in (demo_out / "report.html").read_text()


def test_verify_in_fresh_process_from_stored_reference(demo_out):
    for kind, data in (("text", "topics-val.tsv"), ("image", "digits-val.npz")):
        for name in BUNDLES:
            if name.startswith("tensorrt"):
                continue
            r = run_cli("verify", str(demo_out / kind / name), "--data", str(demo_out / "data" / data),
                        block_torch=True)
            assert r.returncode == 0, (name, r.stderr)
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
        for bundle in BUNDLES:
            manifest = json.loads((demo_out / kind / bundle / "manifest.json").read_text())
            for name in manifest["files"]:  # every file: model, weights, tokenizer, ranges, scripts
                first = demo_out / kind / bundle / name
                assert file_sha256(first) == file_sha256(tmp_path / "again" / kind / bundle / name), (bundle, name)
