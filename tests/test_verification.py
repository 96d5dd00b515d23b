"""Streamed verification: the sampling rule, per-sample files, chunked parity, chunked readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_cnn

import edgesdk
from edgesdk import ImageClassifier, ImagePreprocessing
from edgesdk.data import iter_samples, read_samples
from edgesdk.parity import ParityAccumulator, Thresholds, compare
from edgesdk.verification import ArrayFile, Selection


@pytest.mark.parametrize("total, count", [(10, 3), (1000, 999), (7, 7), (12345, 100), (5, 1)])
def test_selection_takes_evenly_spaced_positions_in_any_chunking(total, count):
    expected = [i * total // count for i in range(count)]
    whole = np.flatnonzero(Selection(total, count).mask(0, total)).tolist()
    assert whole == expected
    selection = Selection(total, count)
    chunked = [s + int(j) for s in range(0, total, 37) for j in np.flatnonzero(selection.mask(s, min(37, total - s)))]
    assert chunked == expected


def test_array_file_reads_back_what_was_appended_in_chunks(tmp_path):
    data = np.random.default_rng(0).normal(size=(2500, 3)).astype(np.float32)
    f = ArrayFile(tmp_path / "a.f32", np.float32, (3,))
    for start in range(0, len(data), 999):
        f.append(data[start:start + 999])
    assert len(f) == 2500
    np.testing.assert_array_equal(f.read(1000, 1500), data[1000:1500])
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in f.chunks(700)]), data)


def test_parity_accumulated_over_chunks_equals_parity_of_the_whole():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(5000, 4))
    cand = ref + rng.normal(scale=1e-3, size=ref.shape) * (rng.random((5000, 1)) < 0.3)
    labels = rng.integers(-1, 4, 5000)
    t = Thresholds(max_abs_diff=2e-3, min_agreement=0.99, max_accuracy_drop=0.01, rtol=1e-4, confidence=0.95)
    whole = compare(ref, cand, t, labels)
    acc = ParityAccumulator(t)
    for start in range(0, 5000, 613):
        acc.add(ref[start:start + 613], cand[start:start + 613], labels[start:start + 613])
    chunked = acc.result()
    exact = np.quantile(np.abs(ref - cand).max(1), 0.99)
    assert exact <= chunked.p99_abs_diff <= exact * 10 ** (1 / 64)  # within one histogram bin above
    for name in ("samples", "agreeing", "lost", "gained", "labeled", "status", "reason", "agreement_lower",
                 "accuracy_drop_upper", "worst_tolerance_ratio", "max_abs_diff"):
        assert getattr(chunked, name) == getattr(whole, name), name
    assert chunked.mean_abs_diff == pytest.approx(whole.mean_abs_diff, rel=1e-12)


@pytest.mark.parametrize("shape", [(250, 9, 7), (250, 9, 7, 1)])
def test_npz_images_stream_in_blocks_as_numpy_reads_them(tmp_path, shape):
    rng = np.random.default_rng(2)
    images, labels = rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(-1, 3, shape[0])
    np.savez_compressed(tmp_path / "d.npz", images=images, labels=labels)
    gray = ImagePreprocessing(size=(8, 8), mean=(0.5,), std=(0.5,), channels=1)
    spec = ImageClassifier.create(tiny_cnn(channels=1, classes=3), labels=["a", "b", "c"], preprocessing=gray).spec
    chunks = list(iter_samples(tmp_path / "d.npz", spec, size=64))
    assert [len(c) for c in chunks] == [64, 64, 64, 58]
    whole = read_samples(tmp_path / "d.npz", spec)
    np.testing.assert_array_equal(np.stack(whole.items), images.reshape(250, 9, 7, 1))
    np.testing.assert_array_equal(whole.labels, labels)


def test_verify_samples_verifies_an_evenly_spaced_subset(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "v.npz", images=rng.integers(0, 256, (300, 16, 16, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, 300))
    model = ImageClassifier.create(tiny_cnn(), labels=["a", "b", "c", "d"],
                                   preprocessing=ImagePreprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3))
    result = edgesdk.convert(model, tmp_path / "dist", verify_on=tmp_path / "v.npz", verify_samples=120, quiet=True)
    assert result.ok, [b.reason for b in result.bundles]
    manifest = json.loads((tmp_path / "dist" / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["parity"]["samples"] == manifest["reference"]["samples"] == 120
    assert manifest["config"]["verify_samples"] == 120
    verification = result.report["verification"]
    assert verification["samples"] == 120 and "120 of 300 samples, evenly spaced" in verification["chosen"]
    assert "120 of 300 samples, evenly spaced" in (tmp_path / "dist" / "report.html").read_text()


def test_verify_from_disk_finds_each_sample_by_digest_and_names_unseen_ones(tiny_text_dir, text_tsv, tmp_path):
    from edgesdk.errors import InputError
    from edgesdk.verify import verify_bundle

    model = edgesdk.TextClassifier.from_pretrained(tiny_text_dir)
    edgesdk.convert(model, tmp_path / "dist", verify_on=text_tsv, quiet=True)
    shuffled = tmp_path / "shuffled.tsv"  # the same samples in another order: found by digest
    lines = text_tsv.read_text(encoding="utf-8").splitlines()
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n", encoding="utf-8")
    result = verify_bundle(tmp_path / "dist" / "onnx-fp32", shuffled)
    assert result and result.samples == len(lines) - 1
    unseen = tmp_path / "unseen.tsv"
    unseen.write_text("a text the conversion never saw\tpos\n", encoding="utf-8")
    with pytest.raises(InputError, match="1 samples in .*unseen.tsv were not in the conversion's verification data"):
        verify_bundle(tmp_path / "dist" / "onnx-fp32", unseen)


def test_parity_fails_a_bundle_whose_probabilities_or_top_k_disagree_with_its_own_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3, size=(200, 10))
    e = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = e / e.sum(1, keepdims=True)
    top_k, bottom_k = np.argsort(-probabilities, axis=1)[:, :3], np.argsort(probabilities, axis=1)[:, :3]
    int8 = np.round(probabilities * 256) / 256  # an int8 softmax output is consistent
    garbled = (probabilities + 128) / 256  # int8 dequantized twice, as XNNPACK's garbled output was
    for outputs, inconsistent in (({"probabilities": int8, "top_k": top_k}, 0),
                                  ({"probabilities": garbled, "top_k": top_k}, 200),
                                  ({"probabilities": probabilities, "top_k": bottom_k}, 200)):
        acc = ParityAccumulator(Thresholds(max_abs_diff=None, min_agreement=0.99))
        acc.add_run(logits, {"logits": logits, **outputs})
        result = acc.result()
        assert result.inconsistent_outputs == inconsistent and bool(result) == (not inconsistent)
