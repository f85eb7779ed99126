"""Kiln's engine as a decoupled Triton python-backend model (it runs inside Triton, not here).

`kiln export --target triton` copies `model.py` and the modules it imports into the model
repository (export/triton_repo.py); the gateway talks to it through service/backends/triton_lm.py.
"""
