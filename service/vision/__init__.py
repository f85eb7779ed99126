"""Image classification in the gateway: decoding, views, aggregation, batching (numpy + Pillow, no torch)."""
