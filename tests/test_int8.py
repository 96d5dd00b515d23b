"""int8 calibration through the pipeline: demo bundles, bad calibration input, the budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

import edgesdk
from edgesdk import TextClassifier
from edgesdk.calibration import MAX_JUDGE_SAMPLES, Budget, Judge
from edgesdk.calibration.calibrate import _judge, effect, judgement_caveat, meets, search_float_layers
from edgesdk.errors import InputError
from edgesdk.runtime.runners.onnx_runner import ort_session


def _onnxruntime_ops(model, folder) -> list[str]:
    """The ops onnxruntime runs for ``model`` (an onnx.ModelProto) once it has optimized it."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(folder / "optimized.onnx")).graph.node]


def test_demo_int8_bundles_pass_with_their_ranges(demo_out):
    import onnx

    from edgesdk.calibration.calibrate import FLOAT16_WEIGHTS, RESIDUAL_WEIGHTS
    from edgesdk.targets.tflite_runtime import INT8_PER_CHANNEL

    for kind in ("text", "image"):
        folder = demo_out / kind / "onnx-int8"
        manifest = json.loads((folder / "manifest.json").read_text())
        parity = manifest["parity"]
        # the gate is the 95% lower bound of agreement, not the point estimate
        assert parity["status"] == "pass" and parity["agreement_lower"] >= 0.99 and parity["samples"] >= 268
        calibration = manifest["build"]["calibration"]
        assert calibration["met_budget"] and calibration["method"] == "mse" and calibration["judged_by"] == "bound"
        assert "verification data" in calibration["judged_on"]
        assert calibration["quantized_layers"] >= 1
        assert len(calibration["sensitivity"]) == calibration["quantizable_layers"]
        # GPTQ rounding where the judging samples keep a lower logit KL with it (every MatMul/Gemm weight
        # of the text model, none of the Convs), else nearest; the report says which
        linear = sum(s["op"] in ("MatMul", "Gemm") for s in calibration["sensitivity"])
        rounding, html = calibration["weight_rounding"], (demo_out / kind / "report.html").read_text()
        kl = rounding["judged_kl"]
        if kl is None:  # no layer GPTQ could round
            assert rounding == {"method": "nearest", "layers": 0, "judged_kl": None} and kind == "image"
        elif rounding["method"] == "gptq":
            assert kl["gptq"] <= kl["nearest"] and 1 <= rounding["layers"] <= linear
            assert rounding["layers"] == linear or kind == "image"
            assert "rounded against their calibration inputs (GPTQ)" in html
        else:
            assert rounding["method"] == "nearest" and rounding["layers"] == 0 and kl["gptq"] > kl["nearest"]
            assert "rounded to\nnearest" in html
        for layer in calibration["float_layers"]:
            assert {"layer", "kl_alone", "local_snr_db", "forced", "weights"} <= set(layer) and not layer["forced"]
        divergence = calibration["divergence"]  # every layer output compared with the float model
        assert len(divergence["layers"]) >= calibration["quantizable_layers"]  # and attention MatMuls
        assert all(r["cosine"] > 0.9 and r["snr_db"] > 0 for r in divergence["layers"])
        blocked = [f for f in calibration["float_layers"] if f["weights"] == "int8, blocks of 32"]
        assert calibration["weight_blocks"]["layers"] == len(blocked)
        halves = [f for f in calibration["float_layers"] if f["weights"] == FLOAT16_WEIGHTS]
        assert calibration["float16_weights"]["layers"] == len(halves)
        assert all(f["weights"] in ("float", FLOAT16_WEIGHTS) for f in calibration["float_layers"] if f not in blocked)
        residual = calibration["residual_weights"]["layers"]
        assert all(f["weights"] == RESIDUAL_WEIGHTS for f in residual)
        assert not {f["layer"] for f in residual} & {f["layer"] for f in calibration["float_layers"]}
        if kind == "text":  # some of its layers out of one-weight static int8 keep the budget with a second
            assert blocked or residual  # int8 weight or with blocks
        model = onnx.load(str(folder / "model.onnx"))  # each blocked weight int8 in the file, made float at load
        int8_weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
        assert len(blocked) == sum(n.op_type == "Cast" and n.input[0] in int8_weights for n in model.graph.node)
        float16 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
        assert len(halves) == sum(n.op_type == "Cast" and n.input[0] in float16 for n in model.graph.node)
        assert len(residual) == sum(n.op_type == "MatMulIntegerToFloat" and n.name.endswith("_residual")
                                    for n in model.graph.node)  # each residual weight in the integer kernel
        for other, weights in (("tensorrt-int8", {"float"}), ("tflite-int8", {"float", INT8_PER_CHANNEL})):
            # TensorRT keeps the layers out of int8 float whole; LiteRT, which has no int8 blocks, may give
            # them int8 weights per channel (float compute); neither has a second int8 weight
            notes = json.loads((demo_out / kind / other / "manifest.json").read_text())["build"]["calibration"]
            assert {f["weights"] for f in notes["float_layers"]} <= weights
            assert notes["residual_weights"]["layers"] == []
            assert "not in this bundle" in notes["residual_weights"]["note"]
        floats = {f["layer"] for f in calibration["float_layers"]}
        assert all(not r["int8"] for r in divergence["layers"] if r["layer"] in floats)
        ranges = json.loads((folder / "ranges.json").read_text())
        assert ("(GPTQ)" in ranges["weights"]["scheme"]) == (rounding["method"] == "gptq")
        quantized = [r for r in ranges["activations"].values() if r["quantized"]]
        assert quantized and all(r["scale"] > 0 and 0 <= r["zero_point"] <= 255 for r in quantized)
        assert all(r["lo"] <= 0 <= r["hi"] for r in ranges["activations"].values())
    text_int8 = onnx.load(str(demo_out / "text" / "onnx-int8" / "model.onnx"))  # onnxruntime's integer form
    assert "MatMulIntegerToFloat" in {n.op_type for n in text_int8.graph.node}
    # onnxruntime runs int8 Convs of the image model as integer Convs (not one that feeds a float layer,
    # whose output stays float) and quantizes none of the float ones itself
    image = json.loads((demo_out / "image" / "onnx-int8" / "manifest.json").read_text())["build"]["calibration"]
    convs = [s["layer"] for s in image["sensitivity"] if s["op"] == "Conv"]
    float_convs = [f for f in image["float_layers"] if f["op"] == "Conv"]
    ops = _onnxruntime_ops(onnx.load(str(demo_out / "image" / "onnx-int8" / "model.onnx")), demo_out.parent)
    assert 1 <= ops.count("QLinearConv") <= len(convs) - len(float_convs)
    assert ops.count("QLinearConv") + ops.count("Conv") + ops.count("FusedConv") == len(convs)
    fp32 = (demo_out / "text" / "onnx-fp32" / "model.onnx").stat().st_size
    # int8 embedding rows and int8 layers; the layers the bound needs on the demo's near-tie traffic stay float
    assert (demo_out / "text" / "onnx-int8" / "model.onnx").stat().st_size < 0.9 * fp32
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


def _trial_table(changes: dict[int, int], n: int = 1000):
    """A trial function over a ranked list: changed answers as a function of how many layers are float."""
    def trial(float_nodes: set[str]) -> dict:
        k = changes[len(float_nodes)]
        return {"samples": n, "agreeing": n - k, "expected_changes": float(k), "kl": k / n, "labeled": 0,
                "lost": 0, "gained": 0, "accuracy_drop": None}

    return trial


def test_search_keeps_the_fewest_layers_in_float_that_meet_the_bound():
    ranked = [{"node": f"n{i}"} for i in range(10)]
    changes = {k: 30 - 3 * k for k in range(11)}  # 1000 samples: the bound of 99% allows 4 changes, 1 of them slack
    kept, chosen, steps, judged = search_float_layers(ranked, _trial_table(changes), Budget(0.99), None)
    assert judged == "bound" and kept == 9 and chosen["agreeing"] == 997
    assert len(steps) < 10  # doubling then bisection, not one trial per layer


def test_a_second_search_keeps_the_judgement_it_is_given():
    """The weight-block search within the float layers judges as the first search did, not by what
    its own extremes can show."""
    ranked = [{"node": f"n{i}"} for i in range(10)]
    changes = {k: 30 - 3 * k for k in range(11)}  # the bound allows 4 changes (kept 9); points allow 9 (kept 7)
    kept, _, _, judged = search_float_layers(ranked, _trial_table(changes), Budget(0.99), None, judged="point")
    assert judged == "point" and kept == 7


def test_litert_int8_weights_go_to_the_block_layers_then_dynamic_range_then_weight_only_to_those_added(tmp_path):
    """Calibration's float layers lead its ranking: searched with the layers LiteRT adds, a cheap
    block layer would stay float whole behind costly added ones; searched first, it gets int8
    weights. The added layers get dynamic range where it keeps the budget, int8 weights else."""
    from types import SimpleNamespace

    from edgesdk.targets.tflite_int8 import DYNAMIC_RANGE, WEIGHT_ONLY
    from edgesdk.targets.tflite_runtime import _int8_weights

    costly = {"a1", "a2", "a3"}  # dynamic range on each of these costs 10 answers, weight-only none
    added = {f"a{i}" for i in range(1, 10)}
    calibration = SimpleNamespace(sensitivity=[{"node": n, "layer": n} for n in ["k0", *sorted(added)]], blocks={"k0"})
    written = []
    full = SimpleNamespace(write=lambda out, float_layers, int8_weights: written.append(dict(int8_weights)))

    def judged(out):
        dynamic = {layer for layer, form in written[-1].items() if form == DYNAMIC_RANGE}
        k = 1 + ("k0" in written[-1]) + 10 * len(costly & dynamic)
        return {"samples": 1000, "agreeing": 1000 - k, "expected_changes": float(k), "kl": k / 1000, "labeled": 0,
                "lost": 0, "gained": 0, "accuracy_drop": None}

    forms, effect, steps = _int8_weights(full, tmp_path / "m.tflite", calibration, {"k0"}, added, judged,
                                         Budget(0.99), "bound")
    assert forms == {"k0": WEIGHT_ONLY, **dict.fromkeys(added - costly, DYNAMIC_RANGE),
                     **dict.fromkeys(costly, WEIGHT_ONLY)} and effect["expected_changes"] == 2
    phases = [s["phase"] for s in steps]
    assert phases[0] == 1 and phases[-1] == 3 and phases == sorted(phases) and 2 in phases


def test_calibration_judges_on_at_most_max_judge_samples_evenly_spaced_over_the_verification_data():
    """2080 verification rows: 2000 judged, spread over all of them (a stride of 2 judged only 1040)."""
    given = list(range(MAX_JUDGE_SAMPLES + 80))
    _, _, judge = _judge(Judge(given, np.array(given), "verification"), list(range(300)), np.zeros(300, int))
    assert len(judge.rows) == MAX_JUDGE_SAMPLES and judge.rows == list(judge.labels)
    assert judge.rows[0] == 0 and judge.rows[-1] > given[-1] - 3 and set(np.diff(judge.rows)) <= {1, 2}


def test_search_judges_on_points_when_the_data_cannot_show_the_bound():
    ranked = [{"node": f"n{i}"} for i in range(6)]
    changes = {0: 9, 1: 4, 2: 3, 3: 2, 4: 2, 5: 2, 6: 2}  # 300 samples: 2 changes can never show 99%
    kept, chosen, _, judged = search_float_layers(ranked, _trial_table(changes, 300), Budget(0.99), None)
    # charged one change of slack: 2 + 1 of 300 is the first point estimate that reaches 99%
    assert judged == "point" and kept == 3 and meets(chosen, Budget(0.99), bound=False)


def test_search_needs_no_change_at_all_when_the_data_shows_the_bound_only_without_one():
    """400 samples show 99% on the bound with no answer changed (the bundles' gates need that),
    not with one change of margin: the search aims at none, not at point estimates that fail."""
    ranked = [{"node": f"n{i}"} for i in range(6)]
    changes = {0: 6, 1: 3, 2: 1, 3: 0, 4: 0, 5: 0, 6: 0}
    kept, chosen, _, judged = search_float_layers(ranked, _trial_table(changes, 400), Budget(0.99), None)
    assert judged == "bound without margin" and kept == 3 and chosen["agreeing"] == 400
    assert meets(chosen, Budget(0.99), margin=0) and not meets(_trial_table(changes, 400)({"n0", "n1"}),
                                                                Budget(0.99), margin=0)
    figures = {"judged_by": judged, "judge_samples": 400, "judged_on": "verification data",
               "budget": {"min_agreement": 0.99, "confidence": 0.95}}
    why = judgement_caveat(figures)
    needed = int(why.split(" or more samples")[0].rsplit(" ", 1)[1])
    assert "only with no answer changed" in why and "no margin" in why
    assert meets({"agreeing": needed, "samples": needed, "expected_changes": 0.0, "labeled": 0}, Budget(0.99))


def test_a_judgement_caveat_says_how_many_samples_would_show_the_bound():
    figures = {"judged_by": "point", "judge_samples": 300, "judged_on": "verification data",
               "budget": {"min_agreement": 0.99, "confidence": 0.95}}
    why = judgement_caveat(figures)
    needed = int(why.split(" or more samples")[0].rsplit(" ", 1)[1])
    assert "the 300 samples it was judged on (verification data) cannot show" in why and "--verify-on" in why
    perfect = {"agreeing": needed, "samples": needed, "expected_changes": 0.0, "labeled": 0}
    assert meets(perfect, Budget(0.99))  # that many samples show the bound, margin charged
    assert not meets({**perfect, "agreeing": needed - 1, "samples": needed - 1}, Budget(0.99))
    assert judgement_caveat({**figures, "judged_by": "bound"}) is None


def test_search_returns_the_best_configuration_when_the_budget_cannot_be_met():
    ranked = [{"node": f"n{i}"} for i in range(6)]
    changes = {0: 500, 1: 200, 2: 300, 3: 400, 4: 400, 5: 400, 6: 400}
    kept, chosen, _, _ = search_float_layers(ranked, _trial_table(changes), Budget(0.99), None)
    assert kept == 1 and chosen["agreeing"] == 800


def test_effect_counts_changes_and_expects_them_from_the_margins():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2000, 3)) * 3
    noisy = reference + rng.normal(size=reference.shape) * 0.05
    e = effect(reference, noisy, np.full(2000, -1))
    seen = 2000 - e["agreeing"]
    assert seen > 0 and abs(e["expected_changes"] - seen) < 3 * np.sqrt(seen) + 2  # the noise model predicts flips


def test_calibration_logits_come_back_in_row_order_whatever_order_the_encoder_batches_in():
    """The encoder batches texts by length; calibration's logits (judged against labels) must not."""
    from onnx import TensorProto, helper

    from edgesdk.calibration.onnx_run import onnx_logits

    class LongestFirst:
        def batches(self, rows, batch_size):
            order = sorted(range(len(rows)), key=lambda i: -rows[i][0])
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                yield idx, {"x": np.stack([rows[i] for i in idx])}

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rows = [np.array([(7 * i) % 40, i], np.float32) for i in range(40)]
    assert np.array_equal(onnx_logits(model, rows, LongestFirst()), np.stack(rows))


def test_onnxruntime_int8_form_runs_each_matmul_and_its_bias_as_one_integer_kernel():
    """The onnx bundle's integer form computes what the QDQ model computes, with one node per layer
    (the bias is added in another order, which may move a value across a rounding boundary of the
    next layer's quantization: one step at most)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import qdq_model
    from edgesdk.targets.onnx_integer import onnxruntime_form

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Add", ["b1", "h"], ["hb"], name="bias1"),  # the bias on either side
         helper.make_node("Relu", ["hb"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")],  # no bias, writes the output
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b1")])
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    qdq, _ = qdq_model(fp32, {"x": (-3.0, 3.0), "r": (0.0, 6.0)}, {"fc1", "fc2"})
    integer = onnxruntime_form(qdq)
    ops = [n.op_type for n in integer.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops and "Add" not in ops
    assert "DequantizeLinear" not in ops  # the weights stay int8, read by the kernel directly
    fused = next(n for n in integer.graph.node if n.name == "fc1")
    assert len(fused.input) == 7 and fused.input[6] == "b1"
    x = rng.normal(size=(64, 8)).astype(np.float32)
    expected = ort_session(qdq.SerializeToString()).run(["logits"], {"x": x})[0]
    step = 6.0 / 255  # the scale of r, the second layer's input
    difference = np.abs(ort_session(integer.SerializeToString()).run(["logits"], {"x": x})[0] - expected)
    assert np.all(difference <= step * np.abs(w2).sum(0) + 1e-4)


def test_symmetric_int8_through_reshapes_loads_in_onnxruntime_and_keeps_its_values():
    """TensorRT's symmetric QDQ of a MobileViT: an int8 conv output reshaped and transposed into a
    float op. onnxruntime 1.32's own rewrites (Q/DQ propagation past the reshape, then int8 to
    uint8) made it refuse the model; ``ort_session`` loads it and computes the QDQ values."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
         helper.make_node("Reshape", ["dq", "grid"], ["v"]),
         helper.make_node("Transpose", ["v"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Reshape", ["t", "flat"], ["u"]),
         helper.make_node("Sigmoid", ["u"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
         numpy_helper.from_array(np.array([1, 4, 8], np.int64), "grid"),
         numpy_helper.from_array(np.array([1, 32], np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.linspace(-8, 8, 32, dtype=np.float32)[None]
    expected = 1 / (1 + np.exp(-(np.clip(np.round(x / 0.05), -128, 127) * 0.05).reshape(4, 8).T.reshape(1, 32)))
    assert np.allclose(ort_session(model.SerializeToString()).run(["y"], {"x": x})[0], expected, atol=1e-6)


OUTLIERS = np.array([1, 1, 1, 30, 1, 1, 1, 1], np.float32)  # per-channel maxima with one outlier


def _smoothed(graph, opset: int, maxima: dict[str, np.ndarray]):
    """The model of ``graph``, its smoothed copy for ``maxima`` and the renaming smoothing made."""
    from onnx import helper

    from edgesdk.calibration.qdq import quantizable_nodes
    from edgesdk.calibration.smooth import smooth_model, smoothable

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    smoothed, renamed = smooth_model(model, smoothable(model, quantizable_nodes(model)), maxima)
    return model, smoothed, renamed


def test_int8_weight_blocks_give_a_float_matmul_one_scale_per_32_input_rows():
    """A layer kept out of static int8 can take int8 weight blocks: stored int8 with one scale per
    block of 32 input rows and output column, it computes close to float in onnxruntime; a weight
    whose rows don't split into blocks, or a model below opset 21, is left as it is."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import blockable, int8_weight_blocks

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 8)).astype(np.float32)
    w[5] *= 40  # an outlier row costs only its own block
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("MatMul", ["h", "v"], ["y"], name="odd")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.normal(size=(8, 5)).astype(np.float32), "v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert blockable(model) == {"fc"}  # 8 rows are no block of 32
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert blockable(old) == set()
    x = rng.normal(size=(16, 64)).astype(np.float32)
    expected = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    int8_weight_blocks(model, {"fc"})
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "w" not in stored and stored["w_blocks"].dtype == np.int8 and stored["w_block_scale"].shape == (2, 8)
    got = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_onnxruntime_form_loads_weight_blocks_as_a_float_matmul_of_the_same_weight(tmp_path):
    """The onnx bundle keeps a blocked layer's weight int8 in the file, and onnxruntime computes
    its float weight once at load: a plain MatMul of exactly ``q * scale`` per block, not the
    ``MatMulNBits`` it would fuse a blocked DequantizeLinear into (slower than float without VNNI)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import int8_weight_blocks
    from edgesdk.targets.onnx_integer import onnxruntime_form

    rng = np.random.default_rng(0)
    w = rng.normal(size=(96, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], [numpy_helper.from_array(w, "w")])
    blocked = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    int8_weight_blocks(blocked, {"fc"})
    stored = {i.name: numpy_helper.to_array(i) for i in blocked.graph.initializer}
    weight = (stored["w_blocks"].reshape(3, 32, 8).astype(np.float32) * stored["w_block_scale"][:, None]).reshape(96, 8)
    shipped = onnxruntime_form(blocked)
    assert not any(a.name == "block_size" for n in shipped.graph.node for a in n.attribute)
    assert numpy_helper.to_array(next(i for i in shipped.graph.initializer if i.name == "w_blocks")).dtype == np.int8
    x = rng.normal(size=(16, 96)).astype(np.float32)
    got = ort_session(shipped.SerializeToString()).run(None, {"x": x})[0]
    assert np.allclose(got, x @ weight, rtol=1e-5, atol=1e-5)
    assert _onnxruntime_ops(shipped, tmp_path) == ["MatMul"]


def test_float_layers_store_float16_weights_that_onnxruntime_folds_to_a_float_matmul_at_load(tmp_path):
    """A layer left float keeps its weight as float16 in the file, cast to float32 once at load: a
    plain float MatMul of the float16-rounded weight. A weight also read as something else than a
    layer's weight, or one float16 cannot hold, stays float32."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import float16_layers, float16_weights

    rng = np.random.default_rng(0)
    w, big, shared = (rng.normal(size=(8, 8)).astype(np.float32) for _ in range(3))
    big[0, 0] = 1e5  # over float16's largest
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("MatMul", ["h", "big"], ["g"], name="wide"),
         helper.make_node("MatMul", ["g", "shared"], ["s"], name="tied"),
         helper.make_node("Add", ["s", "shared"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (big, "big"), (shared, "shared"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert float16_weights(model, {"fc", "wide", "tied"}) == ["w"] and float16_layers(model) == {"fc"}
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert stored["w_float16"].dtype == np.float16 and stored["big"].dtype == stored["shared"].dtype == np.float32
    x = rng.normal(size=(8, 8)).astype(np.float32)
    got = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    h = x @ w.astype(np.float16).astype(np.float32)
    assert np.allclose(got, (h @ big) @ shared + shared, rtol=1e-4, atol=1e-2)
    assert "Cast" not in _onnxruntime_ops(model, tmp_path)  # folded at load


def test_a_residual_int8_weight_brings_a_layer_near_float_and_runs_as_two_integer_matmuls(tmp_path):
    """A layer too sensitive for one int8 weight can take a second, the rounding residual of the
    first: with the same int8 input, its output is as close to float as the input's rounding allows
    (the weights' error about 127 times smaller), and onnxruntime's form computes both in its integer
    kernel; a weight two layers share gets one residual."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import qdq_model, residual_able
    from edgesdk.targets.onnx_integer import onnxruntime_form

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("MatMul", ["x", "w"], ["h2"], name="twin"),
         helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
         helper.make_node("Add", ["hb", "h2"], ["y"], name="sum")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert residual_able(model) == {"fc", "twin"}
    x = rng.uniform(-4, 4, size=(32, 64)).astype(np.float32)
    ranges = {"x": (-4.0, 4.0)}
    step = np.float32(8 / 255)
    x_int8 = (np.clip(np.round(x / step) + 128, 0, 255) - 128) * step  # uint8 over [-4, 4], zero point 128
    one, _ = qdq_model(model, ranges, {"fc", "twin"})
    two, _ = qdq_model(model, ranges, {"fc", "twin"}, residual={"fc", "twin"})
    expected = 2 * x_int8 @ w + numpy_helper.to_array(model.graph.initializer[1])  # both layers read w
    error = {name: np.abs(ort_session(m.SerializeToString()).run(None, {"x": x})[0] - expected).max()
             for name, m in (("one", one), ("two", two))}
    assert error["two"] < error["one"] / 50
    stored = {i.name: numpy_helper.to_array(i) for i in two.graph.initializer}
    assert stored["w_residual_quantized"].dtype == np.int8 and sum(n.endswith("_residual_quantized")
                                                                   for n in stored) == 1
    shipped = onnxruntime_form(two)
    ops = _onnxruntime_ops(shipped, tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 4 and "MatMul" not in ops
    got = ort_session(shipped.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() < error["one"] / 50


def test_smoothing_is_an_exact_rewrite_folded_into_a_product_where_it_can_be():
    """Outlier channels move into the weights; a tensor others read too gets a Mul on its MatMuls'
    path, while a product read only by its MatMul (GELU's ``x * (0.5 * (1 + erf))``) takes the
    scale in its constant factor, with no extra pass."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {name: numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), name) for name in "ab"}
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),  # read by a MatMul and the residual
         helper.make_node("MatMul", ["r", "a"], ["h"], name="fc_a"),
         helper.make_node("Erf", ["h"], ["e"], name="erf"),
         helper.make_node("Add", ["e", "one"], ["e1"], name="plus_one"),
         helper.make_node("Mul", ["half", "e1"], ["m"], name="half_times"),
         helper.make_node("Mul", ["h", "m"], ["gelu"], name="gelu"),  # read by fc_b only
         helper.make_node("MatMul", ["gelu", "b"], ["y"], name="fc_b"),
         helper.make_node("Add", ["y", "r"], ["logits"], name="residual")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])],
        [*weights.values(), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model, smoothed, renamed = _smoothed(graph, 17, {"r": OUTLIERS, "gelu": OUTLIERS[::-1].copy()})
    assert renamed == {"r": "r.smooth", "gelu": "gelu"}
    ops = [n.op_type for n in smoothed.graph.node]
    assert ops.count("Mul") == 3  # one Mul added for r, none for gelu
    factor = numpy_helper.to_array(next(i for i in smoothed.graph.initializer if i.name == "gelu.smooth.factor"))
    assert factor.shape == (8,) and factor[4] < 0.5 / 10 and factor[0] == 0.5
    x = (rng.normal(size=(32, 8)) * OUTLIERS).astype(np.float32)
    expected = ort_session(model.SerializeToString()).run(["logits"], {"x": x})[0]
    got = ort_session(smoothed.SerializeToString()).run(["logits"], {"x": x})[0]
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_smoothing_of_a_layernorm_read_only_by_matmuls_is_folded_into_its_scale_and_bias():
    """Pre-LN (ViT, ModernBERT): a LayerNorm output that only MatMuls read takes the smoothing in its
    scale and bias, with no Mul; one the residual reads too (post-LN BERT) keeps its Mul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = {name: rng.normal(size=shape).astype(np.float32)
                 for name, shape in [("a", (8, 8)), ("b", (8, 8)), ("c", (8, 8)), ("g1", (8,)), ("b1", (8,)),
                                     ("g2", (8,))]}
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["pre"], name="ln_pre"),  # MatMuls only
         helper.make_node("MatMul", ["pre", "a"], ["qa"], name="fc_a"),
         helper.make_node("MatMul", ["pre", "b"], ["qb"], name="fc_b"),
         helper.make_node("Add", ["qa", "qb"], ["s"], name="join"),
         helper.make_node("Add", ["s", "x"], ["r"], name="residual"),  # reads the LayerNorm's input
         helper.make_node("LayerNormalization", ["r", "g2"], ["post"], name="ln_post"),  # no bias
         helper.make_node("MatMul", ["post", "c"], ["y"], name="fc_c"),
         helper.make_node("Add", ["y", "post"], ["logits"], name="residual_post")],  # reads it too
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model, smoothed, renamed = _smoothed(graph, 17, {"pre": OUTLIERS, "post": OUTLIERS[::-1].copy()})
    assert renamed == {"pre": "pre", "post": "post.smooth"}
    assert [n.op_type for n in smoothed.graph.node].count("Mul") == 1  # post's only
    stored = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    scale = OUTLIERS[3] ** 0.75  # the outlier channel's divisor (the others: 1)
    assert np.allclose([stored["g1"][3], stored["b1"][3]], [constants["g1"][3] / scale, constants["b1"][3] / scale])
    assert np.array_equal(stored["g1"][:3], constants["g1"][:3]) and np.array_equal(stored["g2"], constants["g2"])
    x = (rng.normal(size=(32, 8)) * OUTLIERS).astype(np.float32)
    expected = ort_session(model.SerializeToString()).run(["logits"], {"x": x})[0]
    got = ort_session(smoothed.SerializeToString()).run(["logits"], {"x": x})[0]
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_smoothing_that_only_float_layers_read_is_taken_out_of_the_int8_model():
    """A smoothed input read by an int8 layer keeps its Mul; one only float layers read loses it,
    and those layers read the original tensor with their original weights, bit for bit."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import qdq_model
    from edgesdk.calibration.smooth import drop_idle_smoothing

    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=(8, 8)).astype(np.float32) for name in ("a", "b", "c")}
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "a"], ["h"], name="fc_a"),  # int8
         helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
         helper.make_node("MatMul", ["t", "b"], ["u"], name="fc_b"),  # float, with fc_c
         helper.make_node("MatMul", ["t", "c"], ["v"], name="fc_c"),
         helper.make_node("Add", ["u", "v"], ["logits"], name="sum")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model, smoothed, renamed = _smoothed(graph, 17, {"r": OUTLIERS, "t": OUTLIERS[::-1].copy()})
    assert renamed == {"r": "r.smooth", "t": "t.smooth"}
    int8, _ = qdq_model(smoothed, {"r.smooth": (0.0, 4.0)}, {"fc_a"})
    assert drop_idle_smoothing(int8, model) == 1
    nodes = {n.name: n for n in int8.graph.node}
    assert "r.smooth.mul" in nodes and "t.smooth.mul" not in nodes
    constants = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    for name in ("fc_b", "fc_c"):
        assert nodes[name].input[0] == "t" and np.array_equal(constants[nodes[name].input[1]], weights[name[-1]])
    x = rng.normal(size=(16, 8)).astype(np.float32)
    before, _ = qdq_model(smoothed, {"r.smooth": (0.0, 4.0)}, {"fc_a"})
    expected = ort_session(before.SerializeToString()).run(["logits"], {"x": x})[0]
    got = ort_session(int8.SerializeToString()).run(["logits"], {"x": x})[0]
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_smoothing_of_an_attention_output_goes_into_the_value_projection():
    """The output projection's input is an attention output: its smoothing scales the value
    projection's weight and bias columns (exact: each output channel is a weighted sum of its value
    channel), with no Mul; taking out the smoothing of the projections' input when they stay float
    keeps that fold."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.qdq import qdq_model
    from edgesdk.calibration.smooth import SMOOTH_ALPHA, drop_idle_smoothing

    rng = np.random.default_rng(0)
    constants = {name: rng.normal(size=(8, 8)).astype(np.float32) for name in ("wq", "wk", "wv", "wo")}
    constants["bv"] = rng.normal(size=8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         *(helper.make_node("MatMul", ["r", f"w{p}"], [p], name=f"fc_{p}") for p in "qk"),
         helper.make_node("MatMul", ["r", "wv"], ["v0"], name="fc_v"),
         helper.make_node("Add", ["v0", "bv"], ["v"], name="bias_v"),
         helper.make_node("Attention", ["q", "k", "v"], ["a"], name="attention", q_num_heads=2, kv_num_heads=2),
         helper.make_node("MatMul", ["a", "wo"], ["logits"], name="fc_o")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, 8])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model, smoothed, renamed = _smoothed(graph, 23, {"a": OUTLIERS, "r": OUTLIERS[::-1].copy()})
    assert renamed == {"a": "a", "r": "r.smooth"}
    assert [n.op_type for n in smoothed.graph.node].count("Mul") == 1  # r's, none for a
    folded = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    shrink = np.where(OUTLIERS > 1, OUTLIERS ** -SMOOTH_ALPHA, 1.0).astype(np.float32)
    assert np.allclose(folded["bv"], constants["bv"] * shrink)
    assert np.allclose(folded["wv"], constants["wv"] * shrink * (1 / shrink[::-1])[:, None])
    x = rng.normal(size=(1, 5, 8)).astype(np.float32)
    expected = ort_session(model.SerializeToString()).run(["logits"], {"x": x})[0]
    got = ort_session(smoothed.SerializeToString()).run(["logits"], {"x": x})[0]
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)
    int8, _ = qdq_model(smoothed, {"a": (-4.0, 4.0)}, {"fc_o"})  # the projections stay float
    before = ort_session(int8.SerializeToString()).run(["logits"], {"x": x})[0]
    assert drop_idle_smoothing(int8, model) == 1
    restored = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    assert np.array_equal(restored["wq"], constants["wq"]) and np.allclose(restored["wv"], constants["wv"] * shrink)
    assert np.allclose(ort_session(int8.SerializeToString()).run(["logits"], {"x": x})[0], before, rtol=1e-5, atol=1e-5)


class _ArrayRows:
    """An encoder of rows that are arrays: batches them as the model's input ``x``."""

    def batches(self, rows, batch_size):
        for start in range(0, len(rows), batch_size):
            idx = list(range(start, min(len(rows), start + batch_size)))
            yield idx, {"x": np.stack([rows[i] for i in idx])}


def test_layers_are_ranked_by_what_int8_does_to_the_answers_not_by_their_own_snr():
    """A layer whose own output int8 ruins (its range is far too wide) but whose output barely
    reaches the logits ranks below one with a fine output that makes the logits."""
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.calibrate import Judge, _Search
    from edgesdk.calibration.onnx_run import onnx_logits
    from edgesdk.calibration.qdq import qdq_model, quantizable_nodes
    from edgesdk.calibration.sensitivity import local_snr

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["xa"], name="to_a"),
         helper.make_node("Identity", ["x"], ["xb"], name="to_b"),
         helper.make_node("MatMul", ["xa", "wa"], ["a"], name="fc_a"),
         helper.make_node("Mul", ["a", "tiny"], ["a_small"], name="damp"),
         helper.make_node("MatMul", ["xb", "wb"], ["b"], name="fc_b"),
         helper.make_node("Add", ["b", "a_small"], ["logits"], name="sum")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "wa"),
         numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "wb"),
         numpy_helper.from_array(np.array(1e-4, np.float32), "tiny")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rows = list(rng.normal(size=(64, 8)).astype(np.float32))
    ranges = {"xa": (-1000.0, 1000.0), "xb": (-4.0, 4.0)}
    nodes = quantizable_nodes(model)
    search = _Search(model, ranges, {n.node for n in nodes}, Judge(rows, np.full(64, -1), "test"), _ArrayRows(),
                     onnx_logits(model, rows, _ArrayRows()), Budget())
    kl = search.kl_alone(nodes)
    snr = local_snr(model, qdq_model(model, ranges, {n.node for n in nodes})[0], nodes, rows, _ArrayRows())
    assert snr["fc_a"] < snr["fc_b"]  # its own output is the worse one...
    assert kl["fc_b"] > 10 * kl["fc_a"] > 0  # ...but the answers feel fc_b


def test_layers_forced_float_are_not_ranked_and_the_report_says_they_are_yours(tiny_text_dir, text_tsv, tmp_path):
    from edgesdk.demo import OTHER_TOPICS, topic_lines

    calibration = tmp_path / "calibration.tsv"
    calibration.write_text("".join(f"{t}\n" for t, _ in topic_lines(OTHER_TOPICS)[:60]), encoding="utf-8")
    result = edgesdk.convert(TextClassifier.from_pretrained(tiny_text_dir), tmp_path / "out", precisions=["int8"],
                             targets=["onnx"], calibration=calibration, verify_on=text_tsv,
                             float_layers=["*query*"], quiet=True)
    calibration_notes = json.loads((result.out / "onnx-int8" / "manifest.json").read_text())["build"]["calibration"]
    forced = [f for f in calibration_notes["float_layers"] if f["forced"]]
    assert forced and all("query" in f["layer"] and f["kl_alone"] is None for f in forced)
    assert all(s["kl_alone"] is not None for s in calibration_notes["sensitivity"] if "query" not in s["layer"])
    ranked = [s["kl_alone"] for s in calibration_notes["sensitivity"] if s["kl_alone"] is not None]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] > ranked[-1]  # most harmful first
    assert "your --float-layers" in (result.out / "report.html").read_text(encoding="utf-8")


def _layer_model(op: str, w: np.ndarray):
    """A float model of one ``op`` layer ("Conv1": a Conv of one input channel) with weight ``w``
    (Gemm's transposed), and its input shape."""
    from onnx import TensorProto, helper, numpy_helper

    if op.startswith("Conv"):
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="layer", pads=[1, 1, 1, 1])
        x_shape, y_shape = [None, w.shape[1], 5, 5], [None, w.shape[0], 5, 5]
    else:
        node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **({"transB": 1} if op == "Gemm" else {}))
        x_shape = [None, w.shape[1] if op == "Gemm" else w.shape[0]]
        y_shape = [None, w.shape[0] if op == "Gemm" else w.shape[1]]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x_shape


def _paired_weight(op: str, rng, same_sign: bool) -> np.ndarray:
    """A weight whose first two inputs of every output channel (one pair, in the order onnxruntime's
    kernels read them: for a Conv, kernel rows, columns, then input channels) are its largest, of
    one sign or of opposite signs."""
    inputs = {"Conv": 4, "Conv1": 1}.get(op, 16)
    rows = rng.normal(scale=0.1, size=(6, inputs * (9 if op.startswith("Conv") else 1))).astype(np.float32)
    rows[:, 0] = 1.0
    rows[:, 1] = 0.9 if same_sign else -0.9
    if op.startswith("Conv"):
        return np.ascontiguousarray(np.moveaxis(rows.reshape(6, 3, 3, inputs), -1, 1))
    return rows if op == "Gemm" else np.ascontiguousarray(rows.T)


@pytest.mark.parametrize("op", ["MatMul", "Gemm", "Conv", "Conv1"])
def test_int8_weights_never_overflow_the_int16_pair_sums_of_x86_kernels(op):
    """No adjacent pair of int8 weights of one sign (in the order onnxruntime's kernels read an output
    channel's inputs) sums past 128 in magnitude, so uint8 activations up to 255 keep every pair in
    int16; where no pair adds up past the channel's peak, the scale is the plain peak / 127."""
    from onnx import numpy_helper

    from edgesdk.calibration.qdq import _kernel_rows, qdq_model

    rng = np.random.default_rng(1)
    for same_sign in (True, False):
        w = _paired_weight(op, rng, same_sign)
        model, _ = _layer_model(op, w)
        qdq, _ = qdq_model(model, {"x": (-1.0, 1.0)}, {"layer"})
        weights = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
        rows = _kernel_rows(model.graph.node[0], weights["w_quantized"].astype(np.int64))
        if rows.shape[1] % 2:  # a Conv of one input channel: 9 kernel positions, the last unpaired
            rows = np.pad(rows, ((0, 0), (0, 1)))
        pairs = rows.reshape(rows.shape[0], -1, 2)
        assert np.maximum(pairs, 0).sum(2).max() <= 128 and np.maximum(-pairs, 0).sum(2).max() <= 128
        if not same_sign:
            peak = np.abs(_kernel_rows(model.graph.node[0], w)).max(1)
            assert np.allclose(weights["w_scale"], peak / 127, rtol=1e-6)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_int8_weights_rounded_against_their_inputs_fit_the_layer_better_and_keep_the_pair_bound(op):
    """GPTQ rounding (``rounding.py``) keeps nearest rounding's scales, gives outputs closer to the
    float layer's on the inputs it was rounded for than nearest rounding does, keeps every adjacent
    pair of one sign within 128 levels, and is what ``qdq_model`` writes when given."""
    from onnx import numpy_helper

    from edgesdk.calibration.qdq import _kernel_rows, _quantize_weight, _weight_axis, qdq_model, quantizable_nodes
    from edgesdk.calibration.rounding import Gram, rounded_inputs, rounded_weights

    rng = np.random.default_rng(2)
    inputs, outputs = 64, 16
    w = rng.normal(scale=0.1, size=(outputs, inputs)).astype(np.float32)
    w[:, 0], w[:, 1] = 1.0, 0.9  # one pair of one sign at the channel's peak in every output channel
    w = w if op == "Gemm" else np.ascontiguousarray(w.T)
    model, _ = _layer_model(op, w)
    node = model.graph.node[0]
    x = (rng.normal(size=(4000, inputs)) @ rng.normal(size=(inputs, inputs))).astype(np.float32)  # correlated
    gram = Gram()
    for batch in np.split(x, 4):
        gram.update(batch)
    assert np.allclose(gram.value, x.astype(np.float64).T @ x, rtol=1e-9)
    assert rounded_inputs(model, quantizable_nodes(model)) == {"layer": "x"}
    q, scale = rounded_weights(model, {"layer": "x"}, {"x": gram.value})["w"]
    nearest, nearest_scale = _quantize_weight(w, _weight_axis(node, 2), _kernel_rows(node, w))
    assert np.array_equal(scale, nearest_scale) and q.dtype == np.int8

    def output_error(levels: np.ndarray) -> float:
        dequantized = _kernel_rows(node, levels.astype(np.float64)) * scale[:, None]
        return float(np.linalg.norm(x @ (_kernel_rows(node, w).T - dequantized.T)))

    assert output_error(q) < 0.8 * output_error(nearest)
    pairs = _kernel_rows(node, q.astype(np.int64)).reshape(outputs, -1, 2)
    assert np.maximum(pairs, 0).sum(2).max() <= 128 and np.maximum(-pairs, 0).sum(2).max() <= 128
    qdq, _ = qdq_model(model, {"x": (-30.0, 30.0)}, {"layer"}, weights={"w": (q, scale)})
    written = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    assert np.array_equal(written["w_quantized"], q) and np.array_equal(written["w_scale"], scale)


def test_gptq_weights_are_kept_only_where_the_judging_samples_show_a_lower_kl_with_them():
    """``judged_rounding`` judges the every-layer-int8 model with the rounded weights and with
    nearest rounding and keeps the lower logit KL; with nothing rounded it judges nothing."""
    from edgesdk.calibration.calibrate import judged_rounding

    class Search:  # a trial's KL depends only on whether rounded weights are in use
        def __init__(self, weights, kl_rounded, kl_nearest):
            self.weights, self.kl, self.trials = weights, {True: kl_rounded, False: kl_nearest}, 0

        def trial(self, float_nodes):
            assert float_nodes == set()
            self.trials += 1
            return {"kl": self.kl[bool(self.weights)]}

    rounded = {"w": (np.zeros((2, 2), np.int8), np.ones(2, np.float32))}
    better = Search(dict(rounded), 1e-4, 2e-4)
    assert judged_rounding(better) == {"method": "gptq", "layers": 1, "judged_kl": {"nearest": 2e-4, "gptq": 1e-4}}
    assert better.weights == rounded
    worse = Search(dict(rounded), 3e-4, 2e-4)
    assert judged_rounding(worse)["method"] == "nearest" and worse.weights == {}
    none = Search({}, 0.0, 0.0)
    assert judged_rounding(none) == {"method": "nearest", "layers": 0, "judged_kl": None} and none.trials == 0


def _quantized_output(qdq, scale: float):
    """``qdq`` with its output ``y`` quantized (uint8, zero point 128), as the next int8 layer
    would: onnxruntime runs a Conv as ``QLinearConv`` only when a QuantizeLinear follows it."""
    from onnx import helper, numpy_helper

    qdq.graph.node[-1].output[0] = "y_float"
    qdq.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), "y_scale"),
                                  numpy_helper.from_array(np.array(128, np.uint8), "y_zero_point")])
    qdq.graph.node.extend([helper.make_node("QuantizeLinear", ["y_float", "y_scale", "y_zero_point"], ["y_q"]),
                           helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero_point"], ["y"])])
    return qdq


@pytest.mark.parametrize("op", ["MatMul", "Conv", "Conv1"])
def test_onnxruntime_int8_kernels_compute_the_exact_int8_model_at_extreme_activations(op, tmp_path):
    """Activations at the top of their range (uint8 255) against paired large weights: onnxruntime's
    integer kernels (``MatMulIntegerToFloat``, ``QLinearConv``) give what the QDQ model defines (its
    DequantizeLinear and float ops, no fusion) on this CPU, AVX2 or VNNI alike; an int16 overflow
    would cost about half of each output here."""
    import onnxruntime as ort

    from edgesdk.calibration.qdq import qdq_model
    from edgesdk.targets.onnx_integer import onnxruntime_form

    w = _paired_weight(op, np.random.default_rng(2), same_sign=True)
    model, x_shape = _layer_model(op, w)
    qdq, _ = qdq_model(model, {"x": (-1.0, 1.0)}, {"layer"})
    step = 0.0
    if op.startswith("Conv"):
        step = 8.0 / 255
        qdq = _quantized_output(qdq, step)
    x = np.ones([2] + x_shape[1:], np.float32)  # every activation at uint8 255
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(qdq.SerializeToString(), exact, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    shipped = onnxruntime_form(qdq) if op == "MatMul" else qdq
    got = ort_session(shipped.SerializeToString()).run(None, {"x": x})[0]
    kernels = set(_onnxruntime_ops(shipped, tmp_path))
    assert kernels & {"MatMulIntegerToFloat", "QLinearConv"}  # the integer kernel ran, not a float one
    assert np.abs(expected).max() > 10 * (step + 1e-3)
    assert np.allclose(got, expected, rtol=1e-4, atol=step + 1e-4)  # one output step at most


def _residual_cnn():
    """conv1 -> Relu -> conv2, plus the Relu's output (a residual Add) -> pool -> Gemm head."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
                 "w2": rng.normal(0, 0.2, (8, 8, 3, 3)), "b2": rng.normal(0, 0.1, 8),
                 "wh": rng.normal(0, 0.5, (4, 8)), "bh": rng.normal(0, 0.1, 4)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c2", "r1"], ["sum"], name="residual"),
         helper.make_node("GlobalAveragePool", ["sum"], ["pooled"], name="pool"),
         helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "wh", "bh"], ["logits"], name="head", transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_calibrated_convs_run_as_integer_convs_in_onnxruntime(tmp_path):
    """Each int8 Conv's output (after its Relu where that is its only reader) gets a calibrated
    range and a QuantizeLinear that every reader reads through, so onnxruntime runs the Conv as
    ``QLinearConv``; without one it runs a float Conv on the dequantized weight."""
    import onnx

    from edgesdk.calibration.calibrate import Judge, LayerChoice, calibrate
    from edgesdk.calibration.qdq import conv_outputs, qdq_model

    model = _residual_cnn()
    assert conv_outputs(model, {"conv1", "conv2", "head"}) == {"conv1": "r1", "conv2": "c2"}
    fp32 = tmp_path / "cnn.onnx"
    onnx.save_model(model, str(fp32))
    rows = list(np.random.default_rng(1).normal(size=(64, 3, 12, 12)).astype(np.float32))
    result = calibrate(fp32, rows, np.full(64, -1), _ArrayRows(), tmp_path / "work",
                       judge=Judge(rows, np.full(64, -1), "test"), choice=LayerChoice(int8_layers=("*",)))
    ranges = result.ranges["activations"]
    assert {"r1", "c2"} <= {name for name, r in ranges.items() if r["quantized"]} and ranges["r1"]["lo"] == 0
    ops = _onnxruntime_ops(onnx.load(str(result.model)), tmp_path)
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops and "FusedConv" not in ops
    known = {k: (r["lo"], r["hi"]) for k, r in ranges.items()}
    # the same layers with only their inputs quantized: onnxruntime runs conv2 in float
    inputs_only, _ = qdq_model(result.float_model, {k: r for k, r in known.items() if k != "c2"},
                               set(result.quantized_nodes))
    assert _onnxruntime_ops(inputs_only, tmp_path).count("QLinearConv") == 1
    # conv2 float: conv1's output is not quantized for it, or onnxruntime would quantize conv2's float
    # weight itself (and then conv1 runs in float too: a float reader keeps its output float)
    ops = _onnxruntime_ops(qdq_model(result.float_model, known, set(result.quantized_nodes) - {"conv2"})[0], tmp_path)
    assert "QLinearConv" not in ops and ops.count("Conv") + ops.count("FusedConv") == 2


def _classes_model(w: np.ndarray, out):
    """Write a float model whose logits are one MatMul ``fc`` of its input ``x`` and weight ``w``
    (inputs, classes), opset 21; returns its path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(out))
    return out


def test_a_layer_whose_weights_need_more_than_int8_stays_int8_with_a_residual_weight(tmp_path):
    """Classes whose weight columns differ by less than one int8 weight step: one int8 weight changes
    many answers, so the float search keeps the layer float; its input (0 or 1) is exact in uint8,
    so with a second int8 weight it keeps every answer, and calibration gives it one instead of float.
    TensorRT's symmetric model and the summary for a one-weight target have no residual weight."""
    import onnx

    from edgesdk.calibration.calibrate import Judge, calibrate
    from edgesdk.targets.onnx_integer import onnxruntime_form

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 1)) + 0.1 * rng.normal(size=(64, 4))).astype(np.float32)
    fp32 = _classes_model(w, tmp_path / "m.onnx")
    rows = list((rng.random(size=(1000, 64)) < 0.5).astype(np.float32))
    unlabeled = np.full(len(rows), -1)
    result = calibrate(fp32, rows, unlabeled, _ArrayRows(), tmp_path / "work", "minmax",
                       judge=Judge(rows, unlabeled, "test"))
    one_weight = result.figures["search"][0]  # the search's first trial: every layer int8, one weight each
    assert one_weight["float_layers"] == 0 and one_weight["samples"] - one_weight["agreeing"] >= 10
    assert result.met_budget and result.float_layers == [] and result.residual == {"fc"}
    assert [f["layer"] for f in result.figures["residual_weights"]["layers"]] == ["fc"]
    assert result.figures["judged_effect"]["agreeing"] == len(rows)
    ops = [n.op_type for n in onnxruntime_form(onnx.load(str(result.model))).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops
    tensorrt = result.write_model(tmp_path / "trt.onnx", symmetric=True)
    assert not any(n.name.endswith("_residual") for n in onnx.load(str(tensorrt)).graph.node)
    assert result.summary(weights={})["residual_weights"]["layers"] == []


@pytest.mark.parametrize("spread, stored", [(0.2, "float16"), (0.005, "float")])
def test_a_layer_out_of_int8_stores_float16_weights_where_the_judging_keeps_its_answers(tmp_path, spread, stored):
    """A layer whose continuous inputs int8 can't hold (one input channel up to 200 sets the range)
    and whose classes' weight columns differ by ``spread``, less than an int8 weight step: neither a
    second int8 weight (int8 input) nor int8 weight blocks keep its answers, so it stays float. Its
    float16 weights (11 bits) keep them where the columns differ by more than float16's step, and
    change them where they differ by less: the search then keeps float32 weights."""
    import onnx
    from onnx import TensorProto

    from edgesdk.calibration.calibrate import FLOAT16_WEIGHTS, Judge, calibrate

    rng = np.random.default_rng(1)
    w = (rng.normal(size=(64, 1)) + spread * rng.normal(size=(64, 4))).astype(np.float32)
    w[0] = 0.01  # the wide channel adds the same to every class
    fp32 = _classes_model(w, tmp_path / "m.onnx")
    x = rng.random(size=(1000, 64)).astype(np.float32)
    x[:, 0] *= 200
    unlabeled = np.full(len(x), -1)
    result = calibrate(fp32, list(x), unlabeled, _ArrayRows(), tmp_path / "work", "minmax",
                       judge=Judge(list(x), unlabeled, "test"), smooth_alpha=0.0)
    figures = result.figures
    for tier in (figures["residual_weights"], figures["weight_blocks"]):  # each tried with the layer, failed
        assert tier["search"][0]["float_layers"] == 0 and tier["search"][0]["agreeing"] <= 950
    half = figures["float16_weights"]["search"][0]
    assert result.met_budget and [f["layer"] for f in result.float_layers] == ["fc"]
    model = onnx.load(str(result.model))
    halves = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    if stored == "float16":
        assert half["agreeing"] == 1000 and result.halves == {"fc"} and len(halves) == 1
        assert result.float_layers[0]["weights"] == FLOAT16_WEIGHTS
        assert figures["judged_effect"]["kl"] == half["kl"]  # what was judged is what ships
    else:
        assert half["agreeing"] <= 990 and result.halves == frozenset() and not halves
        assert result.float_layers[0]["weights"] == "float" and figures["judged_effect"]["agreeing"] == 1000
    tensorrt = result.write_model(tmp_path / "trt.onnx", symmetric=True)  # TensorRT's float layers stay float32
    assert not any(i.data_type == TensorProto.FLOAT16 for i in onnx.load(str(tensorrt)).graph.initializer)


def test_the_searches_after_the_float_search_keep_the_users_float_layers_float_in_their_trials(tmp_path):
    """A layer the user forces float stays float in every trial of the residual-weight and block
    searches, as in the model that ships: judged int8 there, this near-tie layer's one int8 weight
    would change answers that the shipped model keeps, and take the residual weight from its twin."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgesdk.calibration.calibrate import Judge, LayerChoice, calibrate

    rng = np.random.default_rng(0)
    w = {name: (rng.normal(size=(64, 1)) + 0.1 * rng.normal(size=(64, 4))).astype(np.float32) for name in "ab"}
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "a"], ["ya"], name="fc"),
                               helper.make_node("MatMul", ["x", "b"], ["yb"], name="forced"),
                               helper.make_node("Add", ["ya", "yb"], ["logits"], name="sum")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    fp32 = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(fp32))
    rows = list((rng.random(size=(1000, 64)) < 0.5).astype(np.float32))
    unlabeled = np.full(len(rows), -1)
    result = calibrate(fp32, rows, unlabeled, _ArrayRows(), tmp_path / "work", "minmax",
                       judge=Judge(rows, unlabeled, "test"), choice=LayerChoice(float_layers=("forced",)))
    assert [f["layer"] for f in result.float_layers] == ["forced"] and result.float_layers[0]["forced"]
    assert result.residual == {"fc"} and result.met_budget
    assert result.figures["judged_effect"]["agreeing"] == len(rows)
