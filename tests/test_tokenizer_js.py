"""The browser sample's tokenizer (Tokenizers.js with edgesdk's fixes, samples/browser/encode.js)
gives the ids of Python's tokenizers, for WordPiece, BPE and Unigram, original and pruned."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

import edgesdk
from edgesdk import TextClassifier
from edgesdk.converters.prune_vocab import PruneVocabulary
from edgesdk.corpus import open_tokenizer
from edgesdk.demo import topic_lines

SAMPLE = ROOT / "samples" / "browser"
NODE = shutil.which("node")
FAMILIES = {"WordPiece": "tiny_text_dir", "BPE": "tiny_bpe_dir", "Unigram": "tiny_xlmr_dir"}
TRICKY = ["", " ", "\t\n", "ΣΟΦΟΣ ΛΟΓΟΣ, σοφός", "\u0644\u062a\u0643\u0648\u0651\u0650\u0646 (shadda, kasra)",
          "a\u0301e\u0301 cafe\u0301", "ＦＵＬＬ　ｗｉｄｔｈ ｶﾀｶﾅ", "ﬁﬂ ligatures ½ ⅷ ㎏", "İstanbul ǅemal ß",
          "\u200b zero \u200d width \ufeff", "\x00\x01 controls \x7f", "🙂🚀 👩\u200d👩\u200d👧 🇫🇷 emoji",
          "日本語のテキストと中文", "[CLS] <s> </s> [SEP] <mask> [UNK]", "x" * 700, " ".join(["long words here"] * 200),
          "naïve CRÈME brûlée", "  leading and trailing  ", "a\r\nb", "தமிழ் हिन्दी বাংলা ไทย 한국어"]

pytestmark = pytest.mark.skipif(
    NODE is None or not (SAMPLE / "node_modules" / "@huggingface" / "tokenizers").is_dir(),
    reason="needs node and `npm ci --prefix samples/browser` (.ci/run installs both)",
)


def _chatterbot_texts() -> list[str]:
    """Every statement of chatterbot-corpus' 28 languages (a package's data, not the network)."""
    import chatterbot_corpus

    texts = []
    for path in sorted((Path(chatterbot_corpus.__file__).parent / "data").glob("*/*.yml")):
        for conversation in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            texts += [str(line) for line in conversation]
    return sorted(set(texts))


TEXTS = TRICKY + _chatterbot_texts()


def js_ids(tokenizer_file: Path, max_length: int, texts: list[str]) -> list[list[int]]:
    done = subprocess.run([NODE, str(SAMPLE / "tokenize.mjs"), str(tokenizer_file), str(max_length)],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def python_ids(tokenizer_file: Path, max_length: int, texts: list[str]) -> list[list[int]]:
    tokenizer = open_tokenizer(tokenizer_file)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return [e.ids for e in tokenizer.encode_batch(texts)]


@pytest.fixture(scope="module", params=[(f, p) for f in FAMILIES for p in (False, True)],
                ids=lambda p: f"{p[0]}-{'pruned' if p[1] else 'original'}")
def tokenizer_file(request, tmp_path_factory) -> Path:
    family, pruned = request.param
    classifier = TextClassifier.from_pretrained(request.getfixturevalue(FAMILIES[family]))
    if not pruned:
        return classifier.tokenizer_file
    tmp = tmp_path_factory.mktemp(f"{family}-pruned")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(t for t, _ in topic_lines()[:120]) + "\n", encoding="utf-8")
    prune = PruneVocabulary([corpus])
    prune.workdir = tmp / "pass"
    return prune(classifier).classifier.tokenizer_file


def test_javascript_ids_equal_python_ids(tokenizer_file):
    assert len(TEXTS) > 2000
    for max_length in (128, 16):
        expected, printed = python_ids(tokenizer_file, max_length, TEXTS), js_ids(tokenizer_file, max_length, TEXTS)
        different = [t for t, a, b in zip(TEXTS, expected, printed) if a != b]
        assert not different, f"{len(different)} of {len(TEXTS)} texts differ, first: {different[:3]}"


def _val(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(f"{t}\t{'neg neu pos'.split()[i % 3]}\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def test_conversion_fails_its_tokenization_gate_where_the_browser_would_tokenize_otherwise(tiny_text_dir, tmp_path):
    from tokenizers import Regex, pre_tokenizers

    folder = tmp_path / "model"
    shutil.copytree(tiny_text_dir, folder)
    tokenizer = open_tokenizer(folder / "tokenizer.json")  # a split behavior Tokenizers.js does not implement
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("[,.!?]"), behavior="merged_with_previous"), pre_tokenizers.WhitespaceSplit()])
    tokenizer.save(str(folder / "tokenizer.json"))
    texts = [t for t, _ in topic_lines()[:60]]
    out = tmp_path / "dist"
    result = edgesdk.convert(TextClassifier.from_pretrained(folder), out, targets=["onnx"], precisions=["fp32"],
                             verify_on=_val(tmp_path / "val.tsv", texts), quiet=True)
    (gate,) = result.gates
    punctuated = sum(any(c in t for c in ",.!?") for t in texts)
    assert gate["status"] == "fail" and not result.ok and result.bundles[0].status == "pass"
    assert gate["texts"] == len(texts) and gate["texts_exact"] == len(texts) - punctuated > 0
    assert f"{punctuated} of {len(texts)} verification texts get other ids in the browser" in gate["reason"]
    assert json.loads((out / "onnx-fp32" / "manifest.json").read_text())["gates"] == [gate]
    assert "tokenization in JavaScript" in (out / "report.html").read_text()


def test_the_tokenization_gate_is_skipped_with_the_fix_when_the_browser_sample_is_missing(tiny_text_dir, tmp_path,
                                                                                       monkeypatch):
    from edgesdk.tokenization import javascript_tokenization_gate

    monkeypatch.setenv("EDGESDK_BROWSER_SAMPLE", str(tmp_path))
    classifier = TextClassifier.from_pretrained(tiny_text_dir)
    gate = javascript_tokenization_gate(classifier.encoder(), classifier.tokenizer_file, [["a text"]])
    assert gate["status"] == "skipped" and "EDGESDK_BROWSER_SAMPLE" in gate["reason"] and gate["texts"] == 0


def test_a_browser_tokenizer_that_crashes_fails_the_gate_with_its_error(tiny_text_dir, tmp_path, monkeypatch):
    from edgesdk.tokenization import javascript_tokenization_gate

    package = tmp_path / "node_modules" / "@huggingface" / "tokenizers"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"version": "0.0.0"}')
    (tmp_path / "tokenize.mjs").write_text('console.error("Unknown normalizer type: Weird"); process.exit(1);\n')
    monkeypatch.setenv("EDGESDK_BROWSER_SAMPLE", str(tmp_path))
    classifier = TextClassifier.from_pretrained(tiny_text_dir)
    gate = javascript_tokenization_gate(classifier.encoder(), classifier.tokenizer_file, [["a text"]])
    assert gate["status"] == "fail" and "Unknown normalizer type: Weird" in gate["reason"]
