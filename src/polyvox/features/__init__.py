"""The features stage: mel, F0, energy, image tensors, speaker statistics and leakage-free splits."""
