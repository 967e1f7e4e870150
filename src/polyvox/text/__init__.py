"""Text front-end: normalisation and phonemes."""
