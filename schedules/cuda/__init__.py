"""CUDA conv2d schedule rules."""
RULES = []
