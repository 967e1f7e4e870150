"""Signal processing with no learning: the log-mel analysis, Griffin-Lim and loudness."""
