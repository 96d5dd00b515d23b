"""String-in ONNX models: the tokenizer inside the graph, with onnxruntime-extensions' operators.

The tokenizer graph takes a batch of strings and gives the model's id inputs as the bundle's
tokenizer.json does in Python (special tokens, truncation to max_length, padding to the longest
text of the batch). Joined in front of the id-in model, one onnxruntime session runs strings to
logits. Which operator tokenizes one text:

- WordPiece with a BERT normalizer: ``BertTokenizer`` (vocabulary, lowercasing, accents);
- Unigram: ``SentencepieceTokenizer``, given a SentencePiece model proto built from the
  tokenizer.json (pieces, scores, precompiled normalizer), so a pruned one works too;
- byte-level BPE: ``HfJsonTokenizer``, which reads the tokenizer.json itself.

Each takes one text per call, so the graph loops over the batch. None is Hugging Face's code:
the tokenization gate (``edgesdk.tokenization``) compares the graph's ids with Python's on
every verification text, and the bundle fails where one differs.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from edgesdk.errors import InputError
from edgesdk.runtime.encode import Row, TextEncoder
from edgesdk.runtime.runner import import_runtime
from edgesdk.runtime.runners.onnx_runner import ort_session
from edgesdk.spec import TensorSpec, TextPreprocessing

__all__ = ["CONTRIB_DOMAIN", "string_model", "tokenizer_model", "string_spec_inputs", "graph_tokenizer"]

CONTRIB_DOMAIN = "ai.onnx.contrib"
TEXT_INPUT = "text"
PREFIX = "tokenizer/"
PROBE = "hello world"
# SentencepieceTokenizer's inputs besides the text: no sampling, no special tokens (the graph adds Python's)
_SENTENCEPIECE_INPUTS = {f"{PREFIX}{name}": value for name, value in {
    "nbest_size": (TensorProto.INT64, 0), "alpha": (TensorProto.FLOAT, 0.0), "add_bos": (TensorProto.BOOL, False),
    "add_eos": (TensorProto.BOOL, False), "reverse": (TensorProto.BOOL, False),
    "fairseq": (TensorProto.BOOL, False)}.items()}


def string_spec_inputs() -> tuple[TensorSpec, ...]:
    """The inputs of a string-in text model: one string per sample."""
    return (TensorSpec(TEXT_INPUT, "string", ("batch",)),)


def _tokenizer_nodes(tj: dict[str, Any], tokenizer_text: str) -> list:
    """The nodes tokenizing one text of ``tj`` (a parsed tokenizer.json): ``one_text`` in, int64
    ``raw_ids`` out."""
    kind = tj["model"]["type"]
    if kind == "WordPiece":
        op = _wordpiece_node(tj)
    elif kind == "Unigram":
        op = helper.make_node("SentencepieceTokenizer", [f"{PREFIX}one_text", *_SENTENCEPIECE_INPUTS],
                              [f"{PREFIX}op_ids", f"{PREFIX}offsets"], domain=CONTRIB_DOMAIN,
                              model=_sentencepiece_model(tj))
    elif kind == "BPE":
        op = helper.make_node("HfJsonTokenizer", [f"{PREFIX}one_text"], [f"{PREFIX}op_ids"], domain=CONTRIB_DOMAIN,
                              tokenizer_vocab=tokenizer_text,
                              tokenizer_config=json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    else:
        raise InputError(f"string input has no in-graph tokenizer for a {kind} tokenizer: use --text-input ids")
    constants = [_one_value(name, dtype, value, (1,)) for name, (dtype, value) in _SENTENCEPIECE_INPUTS.items()
                 if name in op.input]
    return [*constants, op, helper.make_node("Cast", [f"{PREFIX}op_ids"], [f"{PREFIX}raw_ids"], to=TensorProto.INT64)]


def _wordpiece_node(tj: dict[str, Any]):
    """onnxruntime-extensions' BertTokenizer with the tokenizer.json's vocabulary and normalizer."""
    normalizer = tj.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        raise InputError(f"the tokenizer is WordPiece with a {normalizer.get('type')} normalizer; string input "
                         "tokenizes WordPiece only as BERT does (BertNormalizer): use --text-input ids")
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise InputError("the WordPiece vocabulary's ids are not 0..n-1: string input needs them contiguous; "
                         "use --text-input ids")
    lowercase = bool(normalizer.get("lowercase", True))
    accents = normalizer.get("strip_accents")  # None: as lowercase (gen_processing_models passes 0 here)
    return helper.make_node(
        "BertTokenizer", [f"{PREFIX}one_text"], [f"{PREFIX}op_ids", f"{PREFIX}type_ids", f"{PREFIX}mask",
                                                  f"{PREFIX}offsets"],
        domain=CONTRIB_DOMAIN, vocab_file="\n".join(t for t, _ in vocab), do_lower_case=int(lowercase),
        strip_accents=int(lowercase if accents is None else accents),
        tokenize_chinese_chars=int(normalizer.get("handle_chinese_chars", True)),
        unk_token=tj["model"].get("unk_token", "[UNK]"),
        suffix_indicator=tj["model"].get("continuing_subword_prefix", "##"))


def _sentencepiece_model(tj: dict[str, Any]) -> bytes:
    """A SentencePiece model proto of a Unigram tokenizer.json: its pieces and scores in id order
    (so SentencePiece's ids are the tokenizer's), its precompiled normalizer, no special tokens
    added (the graph adds Python's)."""
    sp = import_runtime("sentencepiece.sentencepiece_model_pb2", "strings")
    model, piece = tj["model"], sp.ModelProto.SentencePiece
    specials = {t["content"]: t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    proto = sp.ModelProto()
    for i, (text, score) in enumerate(model["vocab"]):
        entry = proto.pieces.add(piece=text, score=score)
        if i == model.get("unk_id"):
            entry.type = piece.UNKNOWN
        elif text in specials:
            entry.type = piece.CONTROL
        elif model.get("byte_fallback") and re.fullmatch(r"<0x[0-9A-F]{2}>", text):
            entry.type = piece.BYTE
    if model.get("unk_id") is None:
        raise InputError("the Unigram tokenizer has no unknown piece: string input needs one; use --text-input ids")
    trainer = proto.trainer_spec
    trainer.model_type, trainer.unk_id, trainer.byte_fallback = sp.TrainerSpec.UNIGRAM, model["unk_id"], bool(
        model.get("byte_fallback"))
    trainer.bos_id, trainer.eos_id, trainer.pad_id = (specials.get(t, -1) for t in ("<s>", "</s>", "<pad>"))
    normalizers = _flat(tj.get("normalizer"))
    precompiled = next((n["precompiled_charsmap"] for n in normalizers if n.get("type") == "Precompiled"), None)
    spec = proto.normalizer_spec
    spec.name = "user_defined" if precompiled else "identity"
    if precompiled:
        spec.precompiled_charsmap = base64.b64decode(precompiled)
    spec.add_dummy_prefix = any(n.get("type") == "Metaspace" and n.get("add_prefix_space", True)
                                and n.get("prepend_scheme", "always") != "never"
                                for n in _flat(tj.get("pre_tokenizer")))
    spec.remove_extra_whitespaces = spec.escape_whitespaces = True
    return proto.SerializeToString()


def _flat(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A tokenizer.json normalizer or pre-tokenizer as a list (a Sequence's members)."""
    if not component:
        return []
    members = component.get("normalizers") or component.get("pretokenizers")
    return [m for c in members for m in _flat(c)] if members else [component]


def _content_at(ids: list[int], content: list[int]) -> int:
    """Where ``content`` starts in ``ids``, or -1."""
    return next((k for k in range(len(ids) - len(content) + 1) if ids[k:k + len(content)] == content), -1)


def _op_ids(nodes: list, opset: int, text: str) -> list[int]:
    """What the tokenizer nodes alone give for ``text``."""
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info(f"{PREFIX}one_text", TensorProto.STRING,
                                                                             [1])],
                              [helper.make_tensor_value_info(f"{PREFIX}raw_ids", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    return [int(i) for i in np.asarray(ort_session(model.SerializeToString(), True).run(None, {
        f"{PREFIX}one_text": np.array([text], dtype=object)})[0]).reshape(-1)]


def _specials(encoder: TextEncoder, op_ids: list[int]) -> tuple[list[int], list[int], int, int]:
    """(prefix, suffix) Python adds around a text's ids, and how many ids the operator adds before
    and after them (it may add its own special tokens, or none)."""
    tokenizer = encoder.tokenizer
    bare = tokenizer.encode(PROBE, add_special_tokens=False).ids
    full = tokenizer.encode(PROBE).ids
    at, op_at = _content_at(full, bare), _content_at(op_ids, bare)
    if at < 0 or op_at < 0:
        raise InputError(f"the in-graph tokenizer gives {op_ids} for {PROBE!r} where tokenizers gives {full}: "
                         "string input is not possible for this tokenizer; use --text-input ids")
    return full[:at], full[at + len(bare):], op_at, len(op_ids) - op_at - len(bare)


def _const(name: str, values: list[int]):
    """A 1-D int64 constant."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, np.int64), name))


def _one_value(name: str, dtype: int, value: Any, dims: tuple[int, ...] = ()):
    """A constant holding one value (0-D unless ``dims`` says otherwise)."""
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, list(dims), [value]))


def _loop_body(tokenizer: list, prefix: list[int], suffix: list[int], front: int, back: int, pre: TextPreprocessing):
    """One text to ``max_length`` ids and mask (padded); the loop stacks them."""
    p = PREFIX
    budget = pre.max_length - len(prefix) - len(suffix)
    nodes = [
        helper.make_node("Unsqueeze", [f"{p}i", f"{p}axis0"], [f"{p}i1"]),
        helper.make_node("Add", [f"{p}i1", f"{p}one"], [f"{p}i1_end"]),
        helper.make_node("Slice", [TEXT_INPUT, f"{p}i1", f"{p}i1_end", f"{p}axis0"], [f"{p}one_text"]),
        *tokenizer,
        helper.make_node("Reshape", [f"{p}raw_ids", f"{p}flat_shape"], [f"{p}flat"]),
        helper.make_node("Shape", [f"{p}flat"], [f"{p}n"]),
        helper.make_node("Sub", [f"{p}n", f"{p}back"], [f"{p}content_end"]),
        helper.make_node("Slice", [f"{p}flat", f"{p}front", f"{p}content_end", f"{p}axis0"], [f"{p}content"]),
        helper.make_node("Slice", [f"{p}content", f"{p}zero", f"{p}budget", f"{p}axis0"], [f"{p}kept"]),
        helper.make_node("Concat", [f"{p}prefix", f"{p}kept", f"{p}suffix"], [f"{p}ids"], axis=0),
        helper.make_node("Shape", [f"{p}ids"], [f"{p}length"]),
        helper.make_node("Sub", [f"{p}max_length", f"{p}length"], [f"{p}pad_after"]),
        helper.make_node("Concat", [f"{p}zero", f"{p}pad_after"], [f"{p}pads"], axis=0),
        helper.make_node("Pad", [f"{p}ids", f"{p}pads", f"{p}pad_id"], [f"{p}ids_row"]),
        helper.make_node("ConstantOfShape", [f"{p}length"], [f"{p}ones"],
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [1])),
        helper.make_node("Pad", [f"{p}ones", f"{p}pads", f"{p}zero_scalar"], [f"{p}mask_row"]),
        helper.make_node("Identity", [f"{p}cond_in"], [f"{p}cond_out"]),
    ]
    constants = [_const(f"{p}axis0", [0]), _const(f"{p}one", [1]), _const(f"{p}flat_shape", [-1]),
                 _const(f"{p}back", [back]), _const(f"{p}front", [front]), _const(f"{p}zero", [0]),
                 _const(f"{p}budget", [budget]), _const(f"{p}prefix", prefix), _const(f"{p}suffix", suffix),
                 _const(f"{p}max_length", [pre.max_length])]
    scalars = [_one_value(f"{p}pad_id", TensorProto.INT64, pre.pad_id),
               _one_value(f"{p}zero_scalar", TensorProto.INT64, 0)]
    return helper.make_graph(
        [*constants, *scalars, *nodes], "one_text",
        [helper.make_tensor_value_info(f"{p}i", TensorProto.INT64, []),
         helper.make_tensor_value_info(f"{p}cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(f"{p}cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{p}ids_row", TensorProto.INT64, [pre.max_length]),
         helper.make_tensor_value_info(f"{p}mask_row", TensorProto.INT64, [pre.max_length])])


def tokenizer_model(encoder: TextEncoder, tokenizer_file: Path, input_names: list[str], opset: int,
                    ir_version: int):
    """The tokenizer graph alone: a batch of strings in, the model's id inputs out (padded to the
    longest text), as ``encoder`` (the bundle's Python tokenizer) would give them."""
    text = Path(tokenizer_file).read_text(encoding="utf-8")
    tokenizer = _tokenizer_nodes(json.loads(text), text)
    prefix, suffix, front, back = _specials(encoder, _op_ids(tokenizer, opset, PROBE))
    p, pre = PREFIX, encoder.pre
    body = _loop_body(tokenizer, prefix, suffix, front, back, pre)
    outputs = {"input_ids": f"{p}ids_cut", "attention_mask": f"{p}mask_cut", "token_type_ids": f"{p}types"}
    unknown = sorted(set(input_names) - set(outputs))
    if unknown:
        raise InputError(f"string input fills input_ids, attention_mask and token_type_ids, not {unknown}: "
                         "use --text-input ids")
    nodes = [
        _const(f"{p}axis1", [1]), _const(f"{p}zero0", [0]),
        helper.make_node("Shape", [TEXT_INPUT], [f"{p}batch"]),
        helper.make_node("Squeeze", [f"{p}batch"], [f"{p}count"]),
        _one_value(f"{p}true", TensorProto.BOOL, True),
        helper.make_node("Loop", [f"{p}count", f"{p}true"], [f"{p}ids_all", f"{p}mask_all"], body=body),
        helper.make_node("ReduceSum", [f"{p}mask_all", f"{p}axis1"], [f"{p}lengths"], keepdims=0),
        helper.make_node("ReduceMax", [f"{p}lengths"], [f"{p}longest"], keepdims=1),
        helper.make_node("Slice", [f"{p}ids_all", f"{p}zero0", f"{p}longest", f"{p}axis1"], [outputs["input_ids"]]),
        helper.make_node("Slice", [f"{p}mask_all", f"{p}zero0", f"{p}longest", f"{p}axis1"],
                         [outputs["attention_mask"]]),
        helper.make_node("Mul", [outputs["input_ids"], f"{p}zero0"], [outputs["token_type_ids"]]),
    ]
    nodes += [helper.make_node("Identity", [outputs[name]], [name]) for name in input_names]
    graph = helper.make_graph(nodes, "tokenizer", [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING,
                                                                                 ["batch"])],
                              [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
                               for n in input_names])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    model.ir_version = ir_version
    return model


def _default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def string_model(model_path: Path, encoder: TextEncoder, tokenizer_file: Path, input_names: list[str], out: Path
                 ) -> Callable[[list[str]], list[Row]]:
    """Write ``out``: the tokenizer graph joined in front of the id-in model at ``model_path``;
    returns the tokenizer graph alone, as a function of texts to rows (for the tokenization gate)."""
    model = onnx.load(str(model_path))
    tokenizer = tokenizer_model(encoder, tokenizer_file, input_names, _default_opset(model), model.ir_version)
    onnx.save(compose.merge_models(tokenizer, model, io_map=[(n, n) for n in input_names]), str(out))
    return graph_tokenizer(tokenizer.SerializeToString(), input_names)


def graph_tokenizer(tokenizer: bytes, input_names: list[str]) -> Callable[[list[str]], list[Row]]:
    """The tokenizer graph as a function: texts to one row per text (each input cut to the text's
    length, as Python's encoder gives it)."""
    session = ort_session(tokenizer, True)

    def tokenize(texts: list[str]) -> list[Row]:
        outputs = dict(zip(input_names, session.run(input_names, {TEXT_INPUT: np.array(texts, dtype=object)})))
        lengths = outputs["attention_mask"].sum(1) if "attention_mask" in outputs else None
        return [{n: outputs[n][i, :lengths[i] if lengths is not None else None] for n in input_names}
                for i in range(len(texts))]

    return tokenize
