"""ARM (aarch64 NEON) conv2d schedule rules."""
RULES = []
