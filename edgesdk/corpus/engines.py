"""Engines that count a corpus's token ids: this machine (every core) or Apache Spark.

Both give the same counts. ``local`` reads the sources in order in this process and encodes
batches in worker processes (one single-threaded tokenizer each; a corpus under
``LOCAL_WORKERS_FROM`` bytes is encoded here, by the tokenizer's own threads, as starting
workers would cost more than it saves). ``spark`` ships the tokenizer.json to the executors
of the cluster at ``master`` (``local[2]``, ``spark://host:7077``, ``yarn``...), counts each
partition there and merges the partitions' counts in partition order here.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from edgesdk.errors import InputError

from .counts import TokenCounts, encode_documents
from .sources import CorpusSource, TextBlock, as_documents

__all__ = ["ENGINES", "check_engine", "count_corpus"]

ENGINES = ("local", "spark")
LOCAL_WORKERS_FROM = 8 << 20  # corpus bytes on disk from which worker processes pay for their start
_IN_FLIGHT = 2  # batches queued per worker: keeps workers busy, memory bounded

Progress = Callable[[str], None]


def count_corpus(tokenizer, sources: list[CorpusSource], min_count: int = 1, *, engine: str = "local",
                 processes: int | None = None, master: str | None = None, batch_lines: int = 2048,
                 progress: Progress | None = None) -> TokenCounts:
    """Token counts of ``sources`` through ``tokenizer`` (without special tokens).

    ``processes`` (local engine) defaults to every core this process may use; ``master`` is
    Spark's master URL (spark engine, default ``local[*]``).
    """
    check_engine(engine, processes)
    start = time.perf_counter()
    if engine == "spark":
        total = _count_on_spark(tokenizer, sources, min_count, master or "local[*]", batch_lines)
    else:
        total = _count_here(tokenizer, sources, min_count, _workers(sources, processes), batch_lines, progress, start)
    total.seconds = time.perf_counter() - start
    if not total.lines:
        raise InputError(f"the corpus ({', '.join(s.name for s in sources)}) holds no text: give one document per "
                         "line or a text column")
    return total


def check_engine(engine: str, processes: int | None = None) -> None:
    """Refuse an unknown engine or a process count below one, naming the choices."""
    if engine not in ENGINES:
        raise InputError(f"unknown corpus engine {engine!r}; known: {', '.join(ENGINES)}")
    if processes is not None and processes < 1:
        raise InputError(f"corpus processes must be at least 1, not {processes}")


def _workers(sources: list[CorpusSource], processes: int | None) -> int:
    """Worker processes for the local engine: 0 (encode here) for a small corpus."""
    if processes is not None:
        return 0 if processes == 1 else processes
    size = sum(f.stat().st_size for s in sources for f in s.files())
    return len(os.sched_getaffinity(0)) if size >= LOCAL_WORKERS_FROM and len(os.sched_getaffinity(0)) > 1 else 0


def _count_here(tokenizer, sources: list[CorpusSource], min_count: int, workers: int, batch_lines: int,
                progress: Progress | None, start: float) -> TokenCounts:
    total = TokenCounts.empty(tokenizer.get_vocab_size(with_added_tokens=True), min_count)
    units = (unit for source in sources for unit in source.units(batch_lines))
    encoded = _encoded_in_workers(tokenizer, units, workers) if workers else (
        encode_documents(tokenizer, as_documents(unit)) for unit in units)
    for flat, lengths, chars in encoded:
        total.add(flat, lengths, chars)
        if progress is not None:
            progress(f"{total.lines:,} lines, {total.lines / max(time.perf_counter() - start, 1e-9):,.0f} lines/s")
    return total


_worker_tokenizer = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["RAYON_NUM_THREADS"] = "1"  # one core per worker: the workers are the parallelism
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode_in_worker(unit: TextBlock | list[str]):
    return encode_documents(_worker_tokenizer, as_documents(unit))


def _encoded_in_workers(tokenizer, units: Iterable[TextBlock | list[str]], workers: int) -> Iterator:
    """Encodings of ``units`` in order, at most ``_IN_FLIGHT`` units per worker in the queue (a
    text block is decoded by its worker, so this process only reads)."""
    context = multiprocessing.get_context("spawn")  # never fork a process holding torch's or rayon's threads
    with context.Pool(workers, initializer=_start_worker, initargs=(tokenizer.to_str(),)) as pool:
        pending: deque = deque()
        for unit in units:
            pending.append(pool.apply_async(_encode_in_worker, (unit,)))
            if len(pending) >= workers * _IN_FLIGHT:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _spark_frame(spark, source: CorpusSource):
    where = source.url or str(source.path)
    if source.kind == "text":
        return spark.read.text(where)
    if source.kind == "parquet":
        return spark.read.parquet(where).select(source.column or source.text_column())
    raise InputError(f"{source.name}: the spark engine reads text files and Parquet, not {source.kind}; "
                     "write the table as Parquet (pyarrow.parquet.write_table) or count with --corpus-engine local")


def _count_partition(shipped, vocab_size: int, min_count: int, batch_lines: int, rows: Iterator) -> Iterator[dict]:
    """On an executor: one partition's counts, sparse."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(shipped.value)
    part = TokenCounts.empty(vocab_size, min_count)
    batch: list[str] = []
    for row in rows:
        text = row[0]
        if text is not None and text.strip():
            batch.append(text.lstrip("\ufeff"))
        if len(batch) == batch_lines:
            part.add(*encode_documents(tokenizer, batch))
            batch = []
    if batch:
        part.add(*encode_documents(tokenizer, batch))
    yield part.sparse()


def _count_on_spark(tokenizer, sources: list[CorpusSource], min_count: int, master: str,
                    batch_lines: int) -> TokenCounts:
    try:
        from pyspark import cloudpickle
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError("the spark engine needs pyspark: pip install 'edgesdk[spark]' (and Java 17+)") from None
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local executors run this Python (with tokenizers)
    spark = (SparkSession.builder.master(master).appName("edgesdk corpus counts")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    shipped_modules = [sys.modules[__name__], sys.modules[TokenCounts.__module__]]
    for module in shipped_modules:  # executors need numpy and tokenizers, not edgesdk
        cloudpickle.register_pickle_by_value(module)
    try:
        frames = [_spark_frame(spark, s) for s in sources]
        frame = functools.reduce(lambda a, b: a.union(b), frames)
        shipped = spark.sparkContext.broadcast(tokenizer.to_str())
        parts = frame.rdd.mapPartitions(functools.partial(_count_partition, shipped, vocab_size, min_count,
                                                          batch_lines))
        total = TokenCounts.empty(vocab_size, min_count)
        for part in parts.toLocalIterator():
            total = total.merge(TokenCounts.from_sparse(vocab_size, min_count, part))
        return total
    finally:
        for module in shipped_modules:
            cloudpickle.unregister_pickle_by_value(module)
        spark.stop()
