"""int8 calibration through the pipeline: demo bundles, bad calibration input, the budget."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from edgesdk.calibration import Budget
from edgesdk.calibration.calibrate import search_float_layers

import edgesdk
from edgesdk import TextClassifier
from edgesdk.errors import InputError


def test_demo_int8_bundles_pass_with_their_ranges(demo_out):
    for kind in ("text", "image"):
        folder = demo_out / kind / "onnx-int8"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["parity"]["status"] == "pass" and manifest["parity"]["agreement"] >= 0.99
        calibration = manifest["build"]["calibration"]
        assert calibration["met_budget"] and calibration["method"] == "mse"
        assert calibration["quantized_layers"] >= 1
        assert len(calibration["sensitivity"]) == calibration["quantizable_layers"]
        for layer in calibration["float_layers"]:
            assert {"layer", "agreement", "mean_abs_diff"} <= set(layer)
        divergence = calibration["divergence"]  # every layer output compared with the float model
        assert len(divergence["layers"]) >= calibration["quantizable_layers"]  # and attention MatMuls
        assert all(r["cosine"] > 0.9 and r["snr_db"] > 0 for r in divergence["layers"])
        floats = {f["layer"] for f in calibration["float_layers"]}
        assert all(not r["int8"] for r in divergence["layers"] if r["layer"] in floats)
        ranges = json.loads((folder / "ranges.json").read_text())
        quantized = [r for r in ranges["activations"].values() if r["quantized"]]
        assert quantized and all(r["scale"] > 0 and 0 <= r["zero_point"] <= 255 for r in quantized)
        assert all(r["lo"] <= 0 <= r["hi"] for r in ranges["activations"].values())
    fp32 = (demo_out / "text" / "onnx-fp32" / "model.onnx").stat().st_size
    # int8 embedding rows and int8 layers; the layers the budget needs stay float
    assert (demo_out / "text" / "onnx-int8" / "model.onnx").stat().st_size < 0.7 * fp32
    r = run_cli("verify", str(demo_out / "text" / "onnx-int8"), "--data", str(demo_out / "data" / "topics-val.tsv"),
                block_torch=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def calibration_tsv(tmp_path):
    from edgesdk.demo import OTHER_TOPICS, topic_lines

    lines = [text for text, _ in topic_lines(OTHER_TOPICS)]

    def write(n: int, offset: int = 0):
        path = tmp_path / f"calib-{n}-{offset}.tsv"
        path.write_text("".join(f"{t}\n" for t in lines[offset:offset + n]), encoding="utf-8")
        return path

    return write


@pytest.mark.parametrize("make, message", [
    (lambda c, npz: c(5), "holds 5 samples; int8 calibration needs at least 20"),
    (lambda c, npz: npz, "looks like image data, but this is a text model"),
    (lambda c, npz: None, "int8 bundles need calibration data"),
])
def test_bad_calibration_input_is_refused_before_writing(tiny_text_dir, text_tsv, calibration_tsv, image_npz,
                                                         tmp_path, make, message):
    model = TextClassifier.from_pretrained(tiny_text_dir)
    with pytest.raises(InputError, match=message):
        edgesdk.convert(model, tmp_path / "dist", precisions=["fp32", "int8"], verify_on=text_tsv,
                        calibration=make(calibration_tsv, image_npz), quiet=True)
    assert not (tmp_path / "dist").exists()


def _trial_table(agreements: dict[int, float]):
    """A trial function over a ranked list: agreement as a function of how many layers are float."""
    def trial(float_nodes: set[str]) -> dict[str, float | None]:
        agreement = agreements[len(float_nodes)]
        return {"agreement": agreement, "mean_abs_diff": 1 - agreement, "max_abs_diff": 1.0, "accuracy_drop": None}

    return trial


def test_search_keeps_the_fewest_layers_in_float_that_meet_the_budget():
    ranked = [{"node": f"n{i}"} for i in range(10)]
    agreements = {k: 0.9 + 0.01 * k for k in range(11)}  # meets 0.99 from 9 float layers on
    kept, effect, steps = search_float_layers(ranked, _trial_table(agreements), Budget(0.99), None)
    assert kept == 9 and effect["agreement"] == pytest.approx(0.99)
    assert len(steps) < 10  # doubling then bisection, not one trial per layer


def test_search_returns_the_best_configuration_when_the_budget_cannot_be_met():
    ranked = [{"node": f"n{i}"} for i in range(6)]
    agreements = {0: 0.5, 1: 0.8, 2: 0.7, 4: 0.6, 6: 0.6, 3: 0.6, 5: 0.6}
    kept, effect, _ = search_float_layers(ranked, _trial_table(agreements), Budget(0.99), None)
    assert kept == 1 and effect["agreement"] == 0.8
