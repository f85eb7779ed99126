"""TEST-ONLY STAND-IN for Triton's ONNX Runtime backend.

The CPU build of Triton 2.51 in nvidia-pytriton has no onnxruntime backend library, so a
`platform: "onnxruntime_onnx"` config cannot load there. The integration tests copy this file
to `<test backend dir>/onnxruntime/model.py`: Triton then runs it through the python backend
(it sets `runtime: "model.py"`), so the UNCHANGED onnxruntime_onnx config written by the export
loads and infers with onnxruntime. It is used only for onnxruntime_onnx entries; Kiln's own
LM model (`<name>-triton`) is a real python-backend model and needs no stand-in. Production
Triton images ship the real backend.

Batching like the real backend: with `max_batch_size > 0` Triton's dynamic batcher hands
`execute` several requests at once; their inputs are concatenated along the batch axis, run as
ONE session call, and the outputs split back per request (so Triton's metrics count one
execution for several inferences, as with the real backend).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):  # type: ignore[no-untyped-def]
        cfg = json.loads(args["model_config"])
        filename = cfg.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        self.batching = int(cfg.get("max_batch_size", 0)) > 0
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in cfg["output"]}

    def execute(self, requests):  # type: ignore[no-untyped-def]
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        if self.batching and len(requests) > 1:
            sizes = [len(f[self.inputs[0]]) for f in feeds]
            merged = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            outs = self.sess.run(self.outputs, merged)
            bounds = np.cumsum([0, *sizes])
            per_request = [[o[a:b] for o in outs] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        else:
            per_request = [self.sess.run(self.outputs, f) for f in feeds]
        responses = []
        for outs in per_request:
            pairs = zip(self.outputs, outs, strict=True)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o, self.dtypes[n])) for n, o in pairs]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
