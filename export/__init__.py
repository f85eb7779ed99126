"""Export side of Kiln (needs torch)."""

from export.vision.compat import ensure_torchvision_importable

# Before anything (transformers, timm) imports torchvision: see export/vision/compat.py.
ensure_torchvision_importable()
