"""A corpus for vocabulary pruning: its sources (text, Parquet, Arrow, datasets), token counts,
and the engines that count them (this machine's cores or Spark)."""

from .counts import TokenCounts, open_tokenizer
from .engines import ENGINES, check_engine, count_corpus
from .sources import CorpusSource, parse_sources

__all__ = ["ENGINES", "check_engine", "CorpusSource", "TokenCounts", "count_corpus", "open_tokenizer", "parse_sources"]
