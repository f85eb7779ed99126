"""What export writes and the service reads: versioned files, graph names and engine settings.

`export/` and `service/` never import each other; they meet here. Nothing in this package
imports torch, FastAPI or ONNX Runtime, so the gateway, the exporter and the Triton python
model (which vendors a copy of it) can all use it.
"""
