"""Corpus readers, the manifest schema, the demo-corpus builder and the ``prepare`` stage."""
