"""The browser sample runs the demo's ONNX bundles in headless Chromium with onnxruntime-web."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

import edgesdk
from edgesdk import TextClassifier
from edgesdk.runtime import load_bundle

SAMPLE = ROOT / "samples" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MULTILINGUAL = ["¿Dónde está la estación de tren?", "Где находится вокзал?", "रेलवे स्टेशन कहाँ है?",
                "火车站在哪里？", "محطة القطار أين هي؟", "Tàu hỏa đến lúc mấy giờ?", "Treni ne zaman kalkıyor?",
                "기차역이 어디에 있어요?", "Wo ist der Bahnhof?", "কম্পিউটার খুব বোকা একটা যন্ত্র!"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or not (SAMPLE / "node_modules" / "onnxruntime-web").is_dir(),
    reason="needs Debian's chromium and `npm ci --prefix samples/browser` (.ci/run installs both)",
)


@contextlib.contextmanager
def _serve(bundles: dict[str, Path], root: Path):
    """A localhost server with the sample page and ``bundles`` (name: folder); yields the page's
    URL up to the bundle's name."""
    (root / "bundles").mkdir(parents=True)
    (root / "sample").symlink_to(SAMPLE)
    for name, folder in bundles.items():
        (root / "bundles" / name).symlink_to(folder)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sample/index.html?bundle=../bundles/"
    server.shutdown()


@pytest.fixture
def served(demo_out, tmp_path):
    """The sample page and the demo's ONNX bundles (``text``, ``image``)."""
    with _serve({kind: demo_out / kind / "onnx-fp32" for kind in ("text", "image")}, tmp_path / "site") as url:
        yield url


def _page(url: str, *args: str, screenshot: Path) -> list[dict]:
    done = subprocess.run(["node", str(SAMPLE / "check.mjs"), url, *args], capture_output=True, text=True,
                          timeout=180, env={"CHROMIUM": CHROMIUM, "SCREENSHOT": str(screenshot), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _classify_texts(url: str, texts: list[str], screenshot: Path) -> list[dict]:
    return _page(url, *[a for t in texts for a in ("--text", t)], screenshot=screenshot)


def test_browser_sample_matches_the_python_runtime(served, demo_out, tmp_path):
    texts = ["who wrote war and peace", "Héllo, WORLD! how much is a steak?", "the goalkeeper saved a penalty"]
    printed = _classify_texts(served + "text", texts, tmp_path / "text.png")
    expected = load_bundle(demo_out / "text" / "onnx-fp32").classify(texts)
    images = np.load(demo_out / "data" / "digits-val.npz")["images"][:3]
    files = []
    for i, pixels in enumerate(images):
        Image.fromarray(pixels[..., 0]).save(tmp_path / f"{i}.png")
        files += ["--image", str(tmp_path / f"{i}.png")]
    printed += _page(served + "image", *files, screenshot=tmp_path / "image.png")
    expected += load_bundle(demo_out / "image" / "onnx-fp32").classify(list(images))
    assert [p["label"] for p in printed] == [e.label for e in expected]
    for p, e in zip(printed, expected):
        assert max(abs(p["probabilities"][k] - v) for k, v in e.probabilities.items()) < 1e-4
    assert (tmp_path / "image.png").stat().st_size > 1000  # the page rendered


def test_browser_sample_runs_a_pruned_multilingual_unigram_bundle(tiny_xlmr_dir, tmp_path):
    lines = MULTILINGUAL * 4
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines[:-8]) + "\n", encoding="utf-8")
    val = tmp_path / "val.tsv"
    val.write_text("".join(f"{t}\t{'no yes'.split()[i % 2]}\n" for i, t in enumerate(lines)), encoding="utf-8")
    out = tmp_path / "dist"
    result = edgesdk.convert(TextClassifier.from_pretrained(tiny_xlmr_dir), out, targets=["onnx"], precisions=["fp32"],
                             corpus=[corpus], verify_on=val, quiet=True)
    tokenization = next(g for g in result.gates if g["name"] == "tokenization in JavaScript")
    assert tokenization["status"] == "pass" and tokenization["texts_exact"] == tokenization["texts"] == len(lines)
    bundle = load_bundle(out / "onnx-fp32")
    assert bundle.encoder.tokenizer.get_vocab_size() < 5000  # pruned from 250,002 pieces
    texts = MULTILINGUAL + ["texto que el corpus nunca vio 🙂", "ΣΟΦΟΣ λόγος"]
    with _serve({"e5": out / "onnx-fp32"}, tmp_path / "site") as url:
        printed = _classify_texts(url + "e5", texts, tmp_path / "e5.png")
    expected = bundle.classify(texts)
    rows = bundle.encoder.encode(texts)
    assert [p["input_ids"] for p in printed] == [r["input_ids"].tolist() for r in rows]
    for p, e in zip(printed, expected):
        assert max(abs(p["probabilities"][k] - v) for k, v in e.probabilities.items()) < 1e-4


def test_the_report_renders_with_nothing_broken_or_cut_off(demo_out, tmp_path):
    done = subprocess.run(["node", str(SAMPLE / "render_report.mjs"), str(demo_out / "report.html"),
                           str(tmp_path / "report.png")], capture_output=True, text=True, timeout=180,
                          env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout.strip().splitlines()[-1])
    assert findings["images"] >= 2 * 12 and not findings["broken"]  # 3+ plots per verified bundle, both models
    assert findings["tables"] > 10 and findings["empty_tables"] == 0
    assert findings["overflow_px"] <= 0, "content wider than the window"
    assert (tmp_path / "report.png").stat().st_size > 50_000
