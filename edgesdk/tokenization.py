"""The tokenization gates: does each other way of tokenizing a bundle's text give Python's ids?

A text bundle's Python runtime tokenizes with Hugging Face ``tokenizers`` (the reference). Two
other tokenizers read the same tokenizer.json, and each is compared with it on every
verification text:

- the browser sample's Tokenizers.js (``samples/browser/encode.js``, run here under Node);
  without Node or the sample's packages that gate is skipped, and says how to get them;
- the tokenizer inside a string-in ONNX graph (onnxruntime-extensions' operators), which also
  runs edgesdk's stress texts (accents, CJK, emoji, control characters, long words, empty and
  over-long texts), counted apart: a difference there names a limit, not a failure on the
  user's data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .runtime.encode import Row, TextEncoder

__all__ = ["javascript_tokenization_gate", "graph_tokenization_gate", "browser_sample", "STRESS_TEXTS"]

SAMPLE_ENV = "EDGESDK_BROWSER_SAMPLE"
CHUNK_TEXTS = 5000
SHOWN = 3
# texts that stress normalizers and pre-tokenizers; one over max_length is added per tokenizer
STRESS_TEXTS = (
    "", " ", "Hello world!", "Café naïve résumé, Ünïcödé ÀÉÎ straße", "x\u0301y (combining accent)",
    "东京是日本的首都", "日本語のテキスト", "한국어 텍스트", "नमस्ते दुनिया", "مرحبا بالعالم", "Привет, мир",
    "emoji 😀 👍🏽 👨\u200d👩\u200d👧 test", "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature ①", "\u200bzero width\u00a0space",
    "tab\there\nnew line", "\x00control\x07chars", "supercalifragilisticexpialidociousantidisestablishmentarianism",
    "don't stop-believing... ¿Qué tal? ¡Bien!", "C++ & C# <html> 3.14159 1,000,000 $5", "  leading and trailing  ",
)


def browser_sample() -> tuple[Path | None, str]:
    """The browser sample folder with its packages installed (``$EDGESDK_BROWSER_SAMPLE`` or the
    checkout's ``samples/browser``) and Node, or None and why not."""
    folder = Path(os.environ.get(SAMPLE_ENV) or Path(__file__).resolve().parents[1] / "samples" / "browser")
    if shutil.which("node") is None:
        return None, "Node.js is not installed (apt install nodejs)"
    if not (folder / "tokenize.mjs").is_file():
        return None, f"the browser sample is not at {folder} (set {SAMPLE_ENV} to a checkout's samples/browser)"
    if not (folder / "node_modules" / "@huggingface" / "tokenizers").is_dir():
        return None, f"the browser sample's packages are not installed (npm ci --prefix {folder})"
    return folder, ""


def _tokenizers_js(folder: Path) -> str:
    package = folder / "node_modules" / "@huggingface" / "tokenizers" / "package.json"
    return f"Tokenizers.js {json.loads(package.read_text(encoding='utf-8'))['version']}"


def _node_ids(folder: Path, tokenizer_file: Path, max_length: int, texts: list[str]) -> list[list[int]]:
    done = subprocess.run(["node", str(folder / "tokenize.mjs"), str(tokenizer_file), str(max_length)],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"samples/browser/tokenize.mjs failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def _count(gate: dict[str, Any], texts: list[str], same: list[bool]) -> None:
    """Add one chunk of texts, and which of them got Python's ids, to ``gate``'s counts."""
    gate["texts"] += len(texts)
    gate["texts_exact"] += sum(same)
    gate["different"] += [t[:200] for t, s in zip(texts, same) if not s][:SHOWN - len(gate["different"])]


def _compare(gate: dict[str, Any], encoder: TextEncoder, folder: Path, tokenizer_file: Path, texts: list[str]) -> None:
    """Add one chunk of texts to ``gate``'s counts."""
    python = [row["input_ids"].tolist() for row in encoder.encode(texts)]
    javascript = _node_ids(folder, tokenizer_file, encoder.pre.max_length, texts)
    _count(gate, texts, [a == b for a, b in zip(python, javascript, strict=True)])


def _same_rows(a: Row, b: Row) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def graph_tokenization_gate(encoder: TextEncoder, tokenize: Callable[[list[str]], list[Row]], tokenizer: str,
                            chunks: Iterable[list[str]]) -> dict[str, Any]:
    """The gate on every text of ``chunks``: the in-graph tokenizer's inputs (``tokenize``) against
    ``encoder``'s, every model input compared; pass when all are identical. The stress texts are
    counted apart, under ``stress``."""
    gate: dict[str, Any] = {"name": "tokenization in the graph", "tokenizer": tokenizer, "texts": 0,
                            "texts_exact": 0, "different": []}

    def compare(counts: dict[str, Any], texts: list[str]) -> None:
        _count(counts, texts, [_same_rows(a, b) for a, b in zip(encoder.encode(texts), tokenize(texts), strict=True)])

    for texts in chunks:
        for start in range(0, len(texts), CHUNK_TEXTS):
            compare(gate, texts[start:start + CHUNK_TEXTS])
    stress: dict[str, Any] = {"texts": 0, "texts_exact": 0, "different": []}
    compare(stress, [*STRESS_TEXTS, "word " * encoder.pre.max_length])
    limits = (f"; {stress['texts'] - stress['texts_exact']} of {stress['texts']} stress texts differ (e.g. "
              f"{', '.join(repr(t[:40]) for t in stress['different'])}): texts like them would not be classified as "
              "in Python" if stress["different"] else f"; and all {stress['texts']} stress texts")
    different = gate["texts"] - gate["texts_exact"]
    if different:
        return {**gate, "stress": stress, "status": "fail", "reason": (
            f"{different} of {gate['texts']} verification texts get other inputs from the graph's tokenizer "
            f"({tokenizer}) than from Python's tokenizers{limits}; use --text-input ids")}
    return {**gate, "stress": stress, "status": "pass",
            "reason": f"all {gate['texts']} verification texts get Python's inputs in the graph ({tokenizer}){limits}"}


def javascript_tokenization_gate(encoder: TextEncoder, tokenizer_file: Path,
                                 chunks: Iterable[list[str]]) -> dict[str, Any]:
    """The gate on every text of ``chunks``: the browser's ids against ``encoder``'s (the bundle's
    Python encoder for ``tokenizer_file``); pass when all are identical."""
    gate: dict[str, Any] = {"name": "tokenization in JavaScript", "texts": 0, "texts_exact": 0, "different": []}
    folder, why = browser_sample()
    if folder is None:
        return {**gate, "status": "skipped", "reason": f"not checked: {why}"}
    gate["tokenizer"] = f"{_tokenizers_js(folder)} with samples/browser/encode.js"
    try:
        for texts in chunks:
            for start in range(0, len(texts), CHUNK_TEXTS):
                _compare(gate, encoder, folder, tokenizer_file, texts[start:start + CHUNK_TEXTS])
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:  # ValueError: bad or short JSON
        return {**gate, "status": "fail", "reason": f"the browser's tokenizer could not encode the verification "
                f"texts ({str(e)[:300]}); the Python runtime is unaffected"}
    different = gate["texts"] - gate["texts_exact"]
    if different:
        reason = (f"{different} of {gate['texts']} verification texts get other ids in the browser "
                  f"({gate['tokenizer']}) than in Python; the Python runtime is unaffected, the browser sample "
                  f"is not safe for this tokenizer")
        return {**gate, "status": "fail", "reason": reason}
    return {**gate, "status": "pass",
            "reason": f"all {gate['texts']} verification texts get Python's ids in the browser ({gate['tokenizer']})"}
