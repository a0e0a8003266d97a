"""What runs: export (torch -> ONNX), import (ONNX -> Relax), per-layer conv2d lowering, build, artifact."""
