"""The clean stage: audio (resample, downmix, trim, loudness) and text (normalisation, phonemes)."""
