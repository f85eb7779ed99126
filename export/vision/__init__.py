"""Image classifiers: demo data, a small ViT, timm models, training, calibration and export."""
