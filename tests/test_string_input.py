"""String-in ONNX text bundles (--text-input string): the tokenizer inside the graph gives Python's
inputs, the bundle takes strings end to end, and a tokenizer the graph can't match fails by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_sample_app

import edgesdk
from edgesdk import TextClassifier, load_bundle
from edgesdk.runtime.encode import TextEncoder
from edgesdk.targets.string_input import graph_tokenizer, tokenizer_model
from edgesdk.tokenization import STRESS_TEXTS

pytest.importorskip("onnxruntime_extensions", reason="pip install 'edgesdk[strings]'")

FAMILIES = {"WordPiece": "tiny_text_dir", "BPE": "tiny_bpe_dir", "Unigram": "tiny_xlmr_dir"}


def _graph_rows(model: TextClassifier, texts: list[str]) -> tuple[list, list]:
    """Python's rows and the tokenizer graph's rows for ``texts``."""
    encoder = model.encoder()
    assert isinstance(encoder, TextEncoder)
    names = [t.name for t in model.spec.inputs]
    graph = tokenizer_model(encoder, model.tokenizer_file, names, 18, 10)
    return encoder.encode(texts), graph_tokenizer(graph.SerializeToString(), names)(texts)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_graph_tokenizes_english_text_as_python_does(family, request):
    from edgesdk.demo import topic_lines

    model = TextClassifier.from_pretrained(request.getfixturevalue(FAMILIES[family]))
    texts = [t for t, _ in topic_lines()][:300] + ["word " * 400, "x", "Hello, world! It's 3.14 o'clock."]
    python, graph = _graph_rows(model, texts)
    different = [t for t, a, b in zip(texts, python, graph) if not (a.keys() == b.keys() and all(
        np.array_equal(a[n], b[n]) for n in a))]
    assert different == []


def test_the_graph_limits_show_on_the_stress_texts(tiny_xlmr_dir):
    """Unigram through SentencePiece collapses whitespace its own way (a whitespace-only text, a
    trailing space): not identical there, which the gate must see."""
    model = TextClassifier.from_pretrained(tiny_xlmr_dir)
    python, graph = _graph_rows(model, list(STRESS_TEXTS))
    different = [t for t, a, b in zip(STRESS_TEXTS, python, graph) if not np.array_equal(a["input_ids"],
                                                                                          b["input_ids"])]
    assert "  leading and trailing  " in different


def test_a_string_bundle_takes_strings_and_matches_the_id_bundle(tiny_text_dir, text_tsv, tmp_path):
    model = TextClassifier.from_pretrained(tiny_text_dir)
    strings = edgesdk.convert(model, tmp_path / "strings", verify_on=text_tsv, text_input="string", quiet=True)
    ids = edgesdk.convert(model, tmp_path / "ids", verify_on=text_tsv, quiet=True)
    (record,) = strings.bundles
    assert record.status == "pass", record.reason
    gate = record.notes["tokenization"]
    assert gate["status"] == "pass" and gate["texts"] == gate["texts_exact"] == 6
    assert gate["stress"]["texts"] == len(STRESS_TEXTS) + 1
    manifest = json.loads((strings.out / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["spec"]["inputs"] == [{"name": "text", "dtype": "string", "shape": ["batch"]}]
    assert manifest["spec"]["preprocessing"]["text_input"] == "string"
    bundle, reference = load_bundle(strings.out / "onnx-fp32", self_test=True), load_bundle(ids.out / "onnx-fp32")
    texts = ["a great movie", "terrible, just terrible", "long " * 300, "", "ÜNÏCÖDE 🙂"]
    got = bundle.run_rows(bundle.encoder.encode(texts))["logits"]
    want = reference.run_rows(reference.encoder.encode(texts))["logits"]
    assert np.abs(got - want).max() <= 1e-6
    assert [p.label for p in bundle.classify(texts)] == [p.label for p in reference.classify(texts)]
    assert edgesdk.verify_bundle(strings.out / "onnx-fp32", text_tsv)
    # the sample app takes the strings too, with onnxruntime, onnxruntime-extensions and numpy: tokenizers blocked
    printed = run_sample_app("onnxruntime_app.py", strings.out / "onnx-fp32", texts[:3], block=("tokenizers",))
    assert [p["label"] for p in printed] == [p.label for p in reference.classify(texts[:3])]


def test_an_int8_string_bundle_puts_the_tokenizer_before_the_integer_model(tiny_text_dir, text_tsv, tmp_path):
    import onnx

    from edgesdk.demo import OTHER_TOPICS, topic_lines

    calibration = tmp_path / "calibration.tsv"
    calibration.write_text("".join(f"{t}\n" for t, _ in topic_lines(OTHER_TOPICS)[:60]), encoding="utf-8")
    model = TextClassifier.from_pretrained(tiny_text_dir)
    result = edgesdk.convert(model, tmp_path / "out", precisions=["int8"], calibration=calibration,
                             verify_on=text_tsv, text_input="string", int8_layers=["*"], quiet=True)
    (record,) = result.bundles
    assert record.notes["tokenization"]["status"] == "pass"
    graph = onnx.load(str(result.out / "onnx-int8" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.index("Loop") < ops.index("MatMulIntegerToFloat")  # the tokenizer's loop over texts, then int8
    bundle = load_bundle(result.out / "onnx-int8", self_test=True)
    assert bundle.run_rows(bundle.encoder.encode(["a great movie", ""]))["logits"].shape == (2, 3)


def test_a_text_the_graph_tokenizes_otherwise_fails_the_bundle_by_name(tiny_xlmr_dir, tmp_path):
    data = tmp_path / "val.tsv"
    data.write_text("text\tlabel\nHello world!\tyes\n  leading and trailing  \tno\n", encoding="utf-8")
    model = TextClassifier.from_pretrained(tiny_xlmr_dir)
    result = edgesdk.convert(model, tmp_path / "out", verify_on=data, text_input="string", quiet=True)
    (record,) = result.bundles
    assert record.status == "fail"
    assert "1 of 2 verification texts get other inputs from the graph's tokenizer" in record.reason
    assert "--text-input ids" in record.reason


def test_text_input_is_checked(tiny_text_dir, text_tsv, tmp_path):
    from conftest import tiny_cnn

    with pytest.raises(edgesdk.InputError, match="text_input must be one of ids, string"):
        edgesdk.ConvertConfig(text_input="bytes")
    text = TextClassifier.from_pretrained(tiny_text_dir)
    with pytest.raises(edgesdk.InputError, match="applies to onnx bundles"):
        edgesdk.convert(text, tmp_path / "a", targets=["openvino"], verify_on=text_tsv, text_input="string", quiet=True)
    image = edgesdk.ImageClassifier.create(tiny_cnn(), ["a", "b", "c", "d"], edgesdk.ImagePreprocessing(
        size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3))
    with pytest.raises(edgesdk.InputError, match="applies to text models"):
        edgesdk.convert(image, tmp_path / "b", text_input="string", quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_cli_names_the_missing_extra(tiny_text_dir, text_tsv, tmp_path):
    from conftest import run_cli

    r = run_cli("convert", "--model", str(tiny_text_dir), "--out", str(tmp_path / "dist"), "--verify-on",
                str(text_tsv), "--text-input", "string", block=("onnxruntime_extensions",))
    assert r.returncode == 2 and "pip install 'edgesdk[strings]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "dist").exists()
