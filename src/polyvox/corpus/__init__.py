"""Corpus readers, the manifest schema, the demo-corpus builder and the ``prepare`` stage."""

from polyvox.corpus.prepare import PrepareResult, prepare
from polyvox.corpus.readers import detect_format, read_corpus
from polyvox.corpus.schema import MANIFEST_COLUMNS, CorpusError, CorpusRow, read_manifest

__all__ = [
    "MANIFEST_COLUMNS",
    "CorpusError",
    "CorpusRow",
    "PrepareResult",
    "detect_format",
    "prepare",
    "read_corpus",
    "read_manifest",
]
