"""The browser sample runs the demo's ONNX bundles in headless Chromium with onnxruntime-web."""

from __future__ import annotations

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

from edgesdk.runtime import load_bundle

SAMPLE = ROOT / "samples" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or not (SAMPLE / "node_modules" / "onnxruntime-web").is_dir(),
    reason="needs Debian's chromium and `npm ci --prefix samples/browser` (.ci/run installs both)",
)


@pytest.fixture
def served(demo_out, tmp_path):
    """A localhost server with the sample page and the demo's ONNX bundles."""
    root = tmp_path / "site"
    (root / "bundles").mkdir(parents=True)
    (root / "sample").symlink_to(SAMPLE)
    for kind in ("text", "image"):
        (root / "bundles" / kind).symlink_to(demo_out / kind / "onnx-fp32")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sample/index.html?bundle=../bundles/"
    server.shutdown()


def _page(url: str, *args: str, screenshot: Path) -> list[dict]:
    done = subprocess.run(["node", str(SAMPLE / "check.mjs"), url, *args], capture_output=True, text=True,
                          timeout=180, env={"CHROMIUM": CHROMIUM, "SCREENSHOT": str(screenshot), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_browser_sample_matches_the_python_runtime(served, demo_out, tmp_path):
    texts = ["who wrote war and peace", "Héllo, WORLD! how much is a steak?", "the goalkeeper saved a penalty"]
    args = [a for t in texts for a in ("--text", t)]
    printed = _page(served + "text", *args, screenshot=tmp_path / "text.png")
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
