"""The joint multimodal trainer (CPU, one GPU, or many through torchrun)."""
