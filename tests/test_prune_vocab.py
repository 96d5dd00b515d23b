"""Vocabulary pruning on real tokenizers of the three families (WordPiece, BPE, Unigram)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgesdk
from edgesdk import TextClassifier
from edgesdk.converters.prune_vocab import PruneVocabulary
from edgesdk.corpus import open_tokenizer
from edgesdk.demo import topic_lines
from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle

LINES = [text for text, _ in topic_lines()]
CORPUS, HELDOUT = LINES[:150], LINES[150:]
FAMILIES = {"WordPiece": "tiny_text_dir", "BPE": "tiny_bpe_dir", "Unigram": "tiny_xlmr_dir"}
ODD_TEXTS = ["", " ", "🙂🚀 emoji", "日本語のテキスト", "Ελληνικά και русский", "\u200b\u0301", "x" * 3000,
             "مرحبا بالعالم", "a\tb\nc", "\x7f\x01"]


def _write(path, lines, gz=False):
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _prune(classifier, tmp_path, name="run", **options):
    corpus = [_write(tmp_path / "corpus-a.txt", CORPUS[:80]), _write(tmp_path / "corpus-b.txt.gz", CORPUS[80:], True)]
    p = PruneVocabulary(corpus, **options)
    p.workdir = tmp_path / name
    return p(classifier)


@pytest.fixture(scope="module", params=list(FAMILIES))
def pruned(request, tmp_path_factory):
    """(family, original classifier, pass result) for each tokenizer family."""
    original = TextClassifier.from_pretrained(request.getfixturevalue(FAMILIES[request.param]))
    tmp = tmp_path_factory.mktemp(request.param)
    return request.param, original, _prune(original, tmp, heldout=_write(tmp / "heldout.txt", HELDOUT))


def _new_ids(original, result) -> dict[int, int]:
    old = open_tokenizer(original.tokenizer_file)
    new = open_tokenizer(result.classifier.tokenizer_file)
    return {old.token_to_id(token): i for token, i in new.get_vocab(with_added_tokens=True).items()}


def test_corpus_tokenizes_to_the_old_ids_and_logits_are_unchanged(pruned):
    family, original, result = pruned
    assert result.notes["family"] == family
    assert result.notes["vocab_after"] < result.notes["vocab_before"]
    assert result.notes["weight_bytes_after"] < result.notes["weight_bytes_before"]
    assert result.notes["corpus_coverage"] == 1.0 and result.notes["corpus_lines"] == len(CORPUS)
    old, new = open_tokenizer(original.tokenizer_file), open_tokenizer(result.classifier.tokenizer_file)
    new_id = _new_ids(original, result)
    for a, b in zip(old.encode_batch(CORPUS), new.encode_batch(CORPUS)):
        assert [new_id[i] for i in a.ids] == b.ids
    pruned_model = result.classifier.model
    assert pruned_model.get_input_embeddings().weight.shape[0] == result.notes["vocab_after"]
    assert pruned_model.config.vocab_size == result.notes["vocab_after"]
    with torch.no_grad():
        for a, b in zip(old.encode_batch(CORPUS[:20]), new.encode_batch(CORPUS[:20])):
            before = original.model(input_ids=torch.tensor([a.ids])).logits
            after = pruned_model(input_ids=torch.tensor([b.ids])).logits
            assert (before - after).abs().max() <= 1e-5


def test_heldout_curve_ends_at_the_measured_exact_share(pruned):
    _, _, result = pruned
    heldout = result.notes["heldout"]
    assert heldout["texts"] == len(HELDOUT)
    shares = [share for _, share in heldout["curve"]]
    assert shares == sorted(shares) and heldout["curve"][-1][0] == 1.0
    assert shares[-1] == pytest.approx(heldout["exact_share"])
    assert 0 < heldout["exact_share"] < 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_still_tokenizes(pruned, text):
    _, _, result = pruned
    tokenizer = open_tokenizer(result.classifier.tokenizer_file)
    for sample in (text, *ODD_TEXTS):
        ids = tokenizer.encode(sample).ids
        assert all(0 <= i < result.notes["vocab_after"] for i in ids)


def test_same_corpus_same_bytes(tiny_xlmr_dir, tmp_path):
    from safetensors.torch import save_file

    original = TextClassifier.from_pretrained(tiny_xlmr_dir)
    outputs = []
    for run in ("one", "two"):
        result = _prune(original, tmp_path, run)
        weights = tmp_path / f"{run}.safetensors"
        save_file({k: v.contiguous() for k, v in result.classifier.model.state_dict().items()}, str(weights))
        outputs.append((result.classifier.tokenizer_file.read_bytes(), weights.read_bytes()))
    assert outputs[0] == outputs[1]


def test_options_min_count_max_vocab_forced(tiny_text_dir, tmp_path):
    original = TextClassifier.from_pretrained(tiny_text_dir)
    forced = _write(tmp_path / "forced.txt", ["zebra", "quantum"])
    full = _prune(original, tmp_path, "full").notes["vocab_after"]
    frequent = _prune(original, tmp_path, "min3", min_count=3)
    assert frequent.notes["vocab_after"] < full and frequent.notes["corpus_coverage"] < 1
    capped = _prune(original, tmp_path, "cap", max_vocab=full - 100)
    assert capped.notes["vocab_after"] <= full - 100
    with_forced = _prune(original, tmp_path, "forced", forced_tokens=forced)
    vocab = open_tokenizer(with_forced.classifier.tokenizer_file).get_vocab()
    assert {"zebra", "quantum"} <= set(vocab)
    with pytest.raises(InputError, match="below the .* tokens every text needs"):
        _prune(original, tmp_path, "tiny", max_vocab=10)
    with pytest.raises(InputError, match="forced2.txt:1: token 'notatoken123'"):
        _prune(original, tmp_path, "bad", forced_tokens=_write(tmp_path / "forced2.txt", ["notatoken123"]))


@pytest.mark.parametrize("content, message", [
    (b"\n  \n", "holds no text"),
    (b"fine line\n\xff\xfe broken\n", "line 2 is not UTF-8"),
    (b"ok\nbin\x00ary\n", "line 2 holds binary data"),
])
def test_bad_corpus_is_refused_and_nothing_written(tiny_text_dir, text_tsv, tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    model = TextClassifier.from_pretrained(tiny_text_dir)
    with pytest.raises(edgesdk.EdgeSDKError, match=message):
        edgesdk.convert(model, tmp_path / "dist", verify_on=text_tsv, corpus=[corpus], quiet=True)
    assert not (tmp_path / "dist").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "val.tsv"]


def test_tokenizer_larger_than_embedding_is_refused(tiny_text_dir, tmp_path):
    model = TextClassifier.from_pretrained(tiny_text_dir)
    model.model.resize_token_embeddings(1000)
    with pytest.raises(InputError, match="tokenizer.json has 30522 tokens but the embedding has 1000 rows"):
        _prune(model, tmp_path)


def test_convert_with_corpus_end_to_end(tiny_text_dir, tmp_path):
    # 300 corpus texts (each twice): enough for the pruning gate's bound to show 99%
    val = _write(tmp_path / "val.tsv", [f"{t}\t{'neg neu pos'.split()[i % 3]}" for i, t in enumerate(CORPUS * 2)])
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.parquet"  # a data lake's table: the text is one column of several
    pq.write_table(pa.table({"id": range(len(CORPUS)), "text": CORPUS, "lang": ["en"] * len(CORPUS)}), corpus)
    out = tmp_path / "dist"
    r = run_cli("convert", "--model", str(tiny_text_dir), "--out", str(out), "--verify-on", str(val),
                "--corpus", f"{corpus}:text", "--heldout", str(_write(tmp_path / "held.txt", HELDOUT)), "--quiet")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "onnx-fp32" / "manifest.json").read_text())
    (record,) = [p for p in manifest["passes"] if p["name"] == "prune_vocabulary"]
    assert record["changed"] and record["vocab_after"] < 2000 and record["max_abs_diff"] <= 1e-5
    assert record["corpus_lines"] == len(CORPUS) and record["corpus_files"][0]["name"] == "corpus.parquet:text"
    assert manifest["parity"]["status"] == "pass" and manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["files"]["tokenizer.json"]["bytes"] < 100_000
    bundle = load_bundle(out / "onnx-fp32")
    assert bundle.encoder.tokenizer.get_vocab_size() == record["vocab_after"]
    assert "prune_vocabulary" in (report := (out / "report.html").read_text()) and "heldout_exact_share" in report
    check = run_cli("verify", str(out / "onnx-fp32"), "--data", str(val), block_torch=True)
    assert check.returncode == 0, check.stderr
    assert sum(bundle.classify(["🙂 never seen"])[0].probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_pruning_gate_fails_with_advice_while_runtime_parity_passes(tiny_text_dir, tmp_path):
    corpus = _write(tmp_path / "corpus.txt", CORPUS[:20])  # a corpus far too small for the traffic below
    val = _write(tmp_path / "val.tsv", HELDOUT * 3)
    out = tmp_path / "dist"
    # the tiny random model barely reacts to its tokens, so ask for more than its ~420 texts can show
    r = run_cli("convert", "--model", str(tiny_text_dir), "--out", str(out), "--verify-on", str(val),
                "--corpus", str(corpus), "--min-pruning-agreement", "0.9999", "--quiet")
    assert r.returncode == 1, r.stderr  # a gate failed: the pruning one
    assert "pruning fidelity fail" in " ".join(r.stdout.split()) and "pruning, not the runtime" in r.stdout
    manifest = json.loads((out / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["parity"]["status"] == "pass"  # the runtime reproduces the pruned model
    gate, tokenization = json.loads((out / "report.json").read_text())["models"][0]["gates"]
    assert gate["status"] == "fail" and gate["texts_exact"] < 0.1 * gate["texts"]
    assert gate["parity"]["agreement_lower"] < 0.9999 and "add corpus lines" in gate["reason"]
    assert "--target-agreement 0.99" in gate["reason"] and "--vocab-prior" in gate["reason"]
    assert "Model gates" in (out / "report.html").read_text()
