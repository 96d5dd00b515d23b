"""The tokenization gate: does the browser's tokenizer give the bundle's ids?

A text bundle's Python runtime tokenizes with Hugging Face ``tokenizers`` (the reference). The
browser sample tokenizes the same tokenizer.json with Tokenizers.js (``samples/browser/encode.js``,
run here under Node): every verification text is encoded by both and the ids compared. Without
Node or the sample's packages the gate is skipped, and says how to get them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .runtime.encode import TextEncoder

__all__ = ["javascript_tokenization_gate", "browser_sample"]

SAMPLE_ENV = "EDGESDK_BROWSER_SAMPLE"
CHUNK_TEXTS = 5000
SHOWN = 3


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


def _compare(gate: dict[str, Any], encoder: TextEncoder, folder: Path, tokenizer_file: Path, texts: list[str]) -> None:
    """Add one chunk of texts to ``gate``'s counts."""
    python = [row["input_ids"].tolist() for row in encoder.encode(texts)]
    javascript = _node_ids(folder, tokenizer_file, encoder.pre.max_length, texts)
    same = [a == b for a, b in zip(python, javascript, strict=True)]
    gate["texts"] += len(texts)
    gate["texts_exact"] += sum(same)
    gate["different"] += [t[:200] for t, s in zip(texts, same) if not s][:SHOWN - len(gate["different"])]


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
