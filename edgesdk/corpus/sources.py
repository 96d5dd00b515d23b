"""Where a corpus comes from: text files and globs of shards, Parquet and Arrow columns, saved
Hugging Face ``datasets`` folders; each read as a stream of documents, never whole.

A source is named as the CLI takes it: ``logs/*.txt.gz`` (one document per line),
``data.parquet:text`` or ``table.arrow:body`` (a string column; the column may be left out
when the table has a single string column), or a folder written by
``datasets.Dataset.save_to_disk`` (``folder:text``).
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgesdk.errors import InputError

__all__ = ["CorpusSource", "TextBlock", "parse_sources", "as_documents", "block_documents"]

BLOCK_BYTES = 1 << 20  # a text file is read in blocks of about this many bytes of whole lines
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
_FORMATS = "text files (.txt, .gz), Parquet (.parquet), Arrow (.arrow, .feather) or a saved datasets folder"


@dataclass(frozen=True)
class CorpusSource:
    """One file (or saved ``datasets`` folder) of a corpus, and the column that holds its text."""

    path: Path
    kind: str  # "text", "parquet", "arrow" or "datasets"
    column: str | None = None
    url: str | None = None  # a cluster's location (hdfs://, s3a://...), read by Spark only

    @property
    def name(self) -> str:
        return (self.url or self.path.name) + (f":{self.column}" if self.column else "")

    def files(self) -> list[Path]:
        """The local files read (the Arrow shards of a datasets folder; none for a URL), for
        hashing and overlap checks."""
        if self.url is not None:
            return []
        return _dataset_files(self.path) if self.kind == "datasets" else [self.path]

    def documents(self, batch_rows: int = 8192) -> Iterator[str]:
        """Every non-blank document, in file order."""
        for unit in self.units(batch_rows):
            yield from as_documents(unit)

    def units(self, batch_rows: int = 8192) -> Iterator[TextBlock | list[str]]:
        """The source as units of work, in order: blocks of whole lines of a text file (raw bytes,
        decoded by whoever encodes them), or lists of a column's documents."""
        if self.kind == "text":
            yield from _blocks(self.path)
            return
        for column in self._columns(batch_rows):
            yield [doc for doc in column.to_pylist() if doc is not None and doc.strip()]

    def text_column(self) -> str:
        """The column that holds the text (Parquet, Arrow, datasets): the one named, or the only
        string column."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(self.path) if self.kind == "parquet" else _open_arrow(self.files()[0]).schema
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{self.path}: cannot read it as {self.kind} ({e})") from e
        return _pick_column(schema, self.column, self.path)

    def _columns(self, batch_rows: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = self.text_column()
        try:
            if self.kind == "parquet":
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows, columns=[column]):
                    yield batch.column(0)
                return
            for path in self.files():
                reader = _open_arrow(path)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
                    if isinstance(reader, pa.ipc.RecordBatchFileReader) else reader
                for batch in batches:
                    yield batch.column(column)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{self.path}: cannot read it as {self.kind} ({e})") from e


@dataclass(frozen=True)
class TextBlock:
    """Whole lines of a text file, undecoded: a unit of work small enough to send to a worker."""

    path: Path
    first_line: int
    data: bytes


def _blocks(path: Path, size: int = BLOCK_BYTES) -> Iterator[TextBlock]:
    """The file (plain or gzip) in blocks of whole lines, about ``size`` bytes each."""
    opener = gzip.open if path.suffix == ".gz" else open
    line, rest = 1, b""
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(size):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    yield TextBlock(path, line, data[:cut])
                    line += data.count(b"\n", 0, cut)
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    if rest:
        yield TextBlock(path, line, rest)


def block_documents(block: TextBlock) -> list[str]:
    """The non-blank lines of a block, decoded; a line that is not UTF-8 text is named."""
    try:
        text = block.data.decode("utf-8-sig" if block.first_line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        line = block.first_line + block.data.count(b"\n", 0, e.start)
        raise InputError(f"{block.path}: line {line} is not UTF-8 text ({e.reason}); re-encode the file as "
                         "UTF-8") from e
    if "\x00" in text:
        line = block.first_line + text.count("\n", 0, text.index("\x00"))
        raise InputError(f"{block.path}: line {line} holds binary data, not text; give one document per line")
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def as_documents(unit: TextBlock | list[str]) -> list[str]:
    """The documents of a unit of work."""
    return block_documents(unit) if isinstance(unit, TextBlock) else unit


def _open_arrow(path: Path):
    """An Arrow IPC file (random access) or stream (what ``datasets`` writes)."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source)


def _pick_column(schema, column: str | None, path: Path) -> str:
    import pyarrow as pa

    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if column is None:
        if len(strings) == 1:
            return strings[0]
        raise InputError(f"{path}: name the text column, e.g. {path}:{strings[0] if strings else 'text'} "
                         f"(string columns: {', '.join(strings) or 'none'})")
    if column not in schema.names:
        raise InputError(f"{path} has no column {column!r}; its columns: {', '.join(schema.names)}")
    if column not in strings:
        raise InputError(f"{path}: column {column!r} holds {schema.field(column).type}, not text; "
                         f"string columns: {', '.join(strings) or 'none'}")
    return column


def _dataset_files(folder: Path) -> list[Path]:
    """The Arrow shards of a folder written by ``Dataset.save_to_disk``, from its state.json."""
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise InputError(f"{folder} holds a DatasetDict: name one split's folder, e.g. {folder / splits[0]}"
                         if splits else f"{folder} holds an empty DatasetDict")
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder} is not a folder written by datasets' save_to_disk (state.json: {e})") from e
    files = [folder / n for n in names]
    outside = [n for n, f in zip(names, files) if f.resolve().parent != folder.resolve() or not f.is_file()]
    if outside:
        raise InputError(f"{folder}/state.json names shards that are not files in the folder: {', '.join(outside)}")
    return files


def _kind(path: Path) -> str | None:
    if path.is_dir():
        return "datasets" if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file() else None
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    return "parquet" if suffix in PARQUET_SUFFIXES else "arrow" if suffix in ARROW_SUFFIXES else "text"


def _expand(spec: str) -> list[Path]:
    if glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        if not matches:
            raise InputError(f"corpus pattern {spec!r} matches no file")
        return matches
    return [Path(spec)]


def _remote(url: str, column: str | None) -> CorpusSource:
    """A source on a cluster's storage, for Spark: text files or Parquet (with its column named)."""
    parquet = url.lower().endswith(PARQUET_SUFFIXES)
    if parquet and column is None:
        raise InputError(f"corpus {url}: name the text column of the Parquet data, e.g. {url}:text")
    if not parquet and column is not None:
        raise InputError(f"corpus {url}: text files have no columns (one document per line); drop ':{column}'")
    return CorpusSource(Path(url.rpartition("/")[2] or "corpus"), "parquet" if parquet else "text", column, url)


def parse_sources(specs: list[str | Path], urls: bool = False) -> list[CorpusSource]:
    """Sources for CLI-style specs (``path``, ``glob``, ``path:column``; with ``urls``, also
    ``scheme://...`` locations that only Spark reads), checked before any work."""
    sources = []
    for spec in map(str, specs):
        column = None
        path, sep, tail = spec.rpartition(":")
        if sep and path and not Path(spec).exists() and tail and "/" not in tail:
            spec, column = path, tail
        if "://" in spec:
            if not urls:
                raise InputError(f"corpus {spec} is a URL: only the spark engine reads them (--corpus-engine spark)")
            sources.append(_remote(spec, column))
            continue
        for path in _expand(spec):
            kind = _kind(path)
            if kind is None:
                raise InputError(f"corpus {path} does not exist or is not one of: {_FORMATS}")
            if kind == "text" and column is not None:
                raise InputError(f"corpus {path}: a text file has no columns (one document per line); "
                                 f"drop ':{column}'")
            source = CorpusSource(path, kind, column)
            source.files()  # a datasets folder is checked here, before any work
            sources.append(source)
    return sources


