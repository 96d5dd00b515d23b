"""The built-in example end to end: bundles pass `edgesdk verify` in a fresh process."""

from __future__ import annotations

import json

from conftest import run_cli

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
            r = run_cli("verify", str(demo_out / kind / name), "--data", str(demo_out / "data" / data),
                        block_torch=True)
            assert r.returncode == 0, (name, r.stderr)
            if not name.startswith("tensorrt"):
                assert ": pass:" in r.stdout
                continue
            # no engine here: TensorRT's own Q/DQ model in onnxruntime, the conversion's proxy figures again
            parity = json.loads((demo_out / kind / name / "manifest.json").read_text())["parity"]
            assert ": skipped:" in r.stdout and "proxy: within thresholds" in r.stdout, r.stdout
            assert f"({parity['agreeing']}/{parity['samples']}," in r.stdout and "as a proxy" in r.stdout


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


def test_int8_conversion_is_deterministic(demo_out, tmp_path):
    """The same model, data and options give the same int8 bundles, file for file (the fp32 side,
    manifests byte for byte, is in test_release.py)."""
    from edgesdk import convert
    from edgesdk.demo import digits_classifier
    from edgesdk.models import load_weights

    image = digits_classifier()
    load_weights(image.model, demo_out / "models" / "digits-cnn.safetensors")
    convert(image, tmp_path / "again", targets=["onnx", "openvino"], precisions=["int8"], quiet=True,
            verify_on=demo_out / "data" / "digits-val.npz", calibration=demo_out / "data" / "digits-calibration.npz")
    for bundle in ("onnx-int8", "openvino-int8"):
        first = json.loads((demo_out / "image" / bundle / "manifest.json").read_text())
        again = json.loads((tmp_path / "again" / bundle / "manifest.json").read_text())
        assert first["files"] == again["files"], bundle  # every file's sha256: model, ranges, reference...
        assert first["build"] == again["build"] and first["parity"] == again["parity"], bundle


def test_demo_writes_the_gates_as_junit(demo_out):
    import xml.etree.ElementTree as ET

    suites = ET.parse(demo_out / "junit.xml").getroot()
    assert [s.get("name") for s in suites] == ["chatbot-topics", "digits-cnn"]
    assert int(suites.get("failures")) == 0 and int(suites.get("errors")) == 0
    skipped = [c for c in suites.iter("testcase") if c.find("skipped") is not None
               and not c.get("classname").endswith(".model")]  # the browser check needs Node
    assert {c.get("classname").split(".")[1] for c in skipped} >= {"tensorrt-fp32", "tensorrt-int8"}
    assert all("no NVIDIA GPU" in c.find("skipped").get("message") or "tensorrt package" in
               c.find("skipped").get("message") or "accuracy drop" in c.get("name") for c in skipped)
