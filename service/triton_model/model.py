"""Kiln's generation engine as a decoupled Triton python-backend model.

Copied by `kiln export --target triton` into `<repository>/<name>-triton/1/model.py`, next to
`kiln_vendor/service/` (Kiln's engine, the same code the gateway runs in-process) and `lm/`
(the ONNX graphs, tokenizer and manifest). This is how Triton serves vLLM and TensorRT-LLM:
the python model owns the scheduler and the KV cache, Triton owns the network.

One model instance runs one GenerationEngine thread (continuous batching over a preallocated
KV cache on ONNX Runtime). `execute` only validates and enqueues each request, then returns;
the engine thread streams one response per generated token through the request's response
sender and ends with a final response carrying FINISH_REASON and usage. A cancelled gRPC
stream cancels the sequence, which frees its KV slot at the next engine step.

Inputs: INPUT_IDS (prompt token ids; the gateway tokenizes), MAX_NEW_TOKENS and optional
TEMPERATURE, TOP_K, TOP_P, REPETITION_PENALTY, SEED, STOP (strings, matched here with the same
StreamDecoder as in-process, so generation ends and the slot frees at the stop string; the
gateway re-decodes the ids with the same stops to produce identical text), IGNORE_EOS,
TIMEOUT_S, LOGPROBS (contracts/triton.py). Engine settings come from config.pbtxt `parameters`
(KILN_MAX_BATCH..., rendered from contracts/engine.py's EngineConfig, the gateway's defaults), and
the engine is assembled by the same builder the gateway uses (service/engine/build.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

if int(np.__version__.split(".")[0]) >= 2:  # the 2.51 stub is built for numpy 1: numpy 2 corrupts tensors
    raise RuntimeError(f"Triton's python backend stub needs numpy<2 in its environment (found {np.__version__})")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "kiln_vendor"))

from tokenizers import Tokenizer  # noqa: E402

from contracts.engine import EngineConfig  # noqa: E402
from contracts.manifest import TextManifest  # noqa: E402
from service.engine.build import build_text_engine  # noqa: E402
from service.engine.request import FinishEvent, GenerationRequest, TokenEvent  # noqa: E402
from service.engine.sampling import SamplingParams  # noqa: E402
from service.errors import KilnError  # noqa: E402
from service.triton_model.live import LiveRequests  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
log = logging.getLogger("kiln.triton")


def _scalar(request, name: str, default):  # type: ignore[no-untyped-def]
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return tensor.as_numpy().reshape(-1)[0].item()


def _array(request, name: str) -> list:  # type: ignore[no-untyped-def]
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return [] if tensor is None else tensor.as_numpy().reshape(-1).tolist()


def _strings(request, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


def _final(event: FinishEvent) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(
        [
            pb_utils.Tensor("TOKEN_IDS", np.zeros(0, np.int64)),
            pb_utils.Tensor("FINISH_REASON", np.array([event.reason.encode()], dtype=np.object_)),
            pb_utils.Tensor("MESSAGE", np.array([event.message.encode()], dtype=np.object_)),
            pb_utils.Tensor("PROMPT_TOKENS", np.array([event.prompt_tokens], np.int32)),
            pb_utils.Tensor("COMPLETION_TOKENS", np.array([event.completion_tokens], np.int32)),
            pb_utils.Tensor("QUEUE_MS", np.array([event.queue_s * 1000.0], np.float32)),
        ]
    )


def _token(event: TokenEvent) -> pb_utils.InferenceResponse:
    tensors = [pb_utils.Tensor("TOKEN_IDS", np.array([event.token_id], np.int64))]
    if event.logprob is not None:
        top = event.top_logprobs or []
        tensors += [
            pb_utils.Tensor("LOGPROB", np.array([event.logprob], np.float32)),
            pb_utils.Tensor("TOP_IDS", np.array([t for t, _ in top], np.int64)),
            pb_utils.Tensor("TOP_LOGPROBS", np.array([lp for _, lp in top], np.float32)),
        ]
    return pb_utils.InferenceResponse(tensors)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        manifest = TextManifest.read(Path(HERE) / "lm")
        self.tokenizer = Tokenizer.from_file(str(manifest.path(manifest.tokenizer)))
        config = EngineConfig.from_parameters(params)
        self.engine = build_text_engine(
            manifest,
            config,
            decode=lambda ids: self.tokenizer.decode(list(ids), skip_special_tokens=True),
            name=self.name,
        )
        runner = self.engine.runner
        self.vocab_size = manifest.vocab_size
        self._live = LiveRequests()
        self._stopping = threading.Event()
        self.engine.start()
        self._watcher = threading.Thread(target=self._watch_cancellations, name="kiln-cancel-watch", daemon=True)
        self._watcher.start()
        pb_utils.Logger.log_info(
            f"{self.name}: Kiln engine on ONNX Runtime ({manifest.graph(config.lm_variant).path.name}), "
            f"{runner.max_batch} KV slots x {runner.max_seq_len} positions"
        )

    def execute(self, requests):  # type: ignore[no-untyped-def]
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._submit(request, sender)
            except KilnError as exc:  # queue full, draining: "<code>: <message>" for the gateway
                error = pb_utils.TritonError(f"{exc.code}: {exc.message}")
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            except Exception as exc:  # a bad request must not take the model down
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"invalid_request: {exc}")), flags=FINAL
                )
        return None  # decoupled: responses go through the senders

    def _submit(self, request, sender) -> None:  # type: ignore[no-untyped-def]
        ids = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS").as_numpy().reshape(-1).astype(np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"INPUT_IDS must be 1+ token ids in [0, {self.vocab_size})")
        seed = _scalar(request, "SEED", -1)
        timeout = float(_scalar(request, "TIMEOUT_S", 0.0))
        logprobs = int(_scalar(request, "LOGPROBS", -1))
        sampling = SamplingParams(
            temperature=float(_scalar(request, "TEMPERATURE", 0.0)),
            top_k=int(_scalar(request, "TOP_K", 0)),
            top_p=float(_scalar(request, "TOP_P", 1.0)),
            repetition_penalty=float(_scalar(request, "REPETITION_PENALTY", 1.0)),
            min_p=float(_scalar(request, "MIN_P", 0.0)),
            presence_penalty=float(_scalar(request, "PRESENCE_PENALTY", 0.0)),
            frequency_penalty=float(_scalar(request, "FREQUENCY_PENALTY", 0.0)),
            logit_bias=tuple(zip(_array(request, "LOGIT_BIAS_IDS"), _array(request, "LOGIT_BIAS_VALUES"), strict=True)),
            seed=None if seed < 0 else int(seed),
        )
        holder: dict = {}

        def emit(event) -> None:  # type: ignore[no-untyped-def]  # engine thread
            req = holder["req"]
            try:
                if isinstance(event, FinishEvent):
                    self._live.remove(req)  # first: the watch must not ask its sender after FINAL
                    if event.reason != "cancelled":
                        sender.send(_final(event), flags=FINAL)
                    else:
                        sender.send(flags=FINAL)
                elif event.token_id >= 0:  # tail text (-1) is re-derived by the gateway's decoder
                    sender.send(_token(event))
            except Exception as exc:  # the client went away mid-send
                log.debug("send failed: %s", exc)
                req.cancel()

        req = GenerationRequest(
            prompt_ids=ids.tolist(),
            max_new_tokens=int(_scalar(request, "MAX_NEW_TOKENS", 64)),
            sampling=sampling,
            stop=_strings(request, "STOP"),
            emit=emit,
            deadline=time.monotonic() + timeout if timeout > 0 else None,
            ignore_eos=bool(_scalar(request, "IGNORE_EOS", False)),
            logprobs=None if logprobs < 0 else logprobs,
            min_tokens=int(_scalar(request, "MIN_TOKENS", 0)),
            stop_token_ids=frozenset(int(t) for t in _array(request, "STOP_TOKEN_IDS")),
            tenant=next(iter(_strings(request, "TENANT")), ""),
            protocol="triton",
        )
        holder["req"] = req
        self._live.add(req, sender)
        try:
            self.engine.submit(req)
        except Exception:
            self._live.remove(req)
            raise

    def _watch_cancellations(self) -> None:
        """Triton marks a sender cancelled when the client cancels its gRPC stream."""
        while not self._stopping.wait(0.05):
            self._live.check_cancelled()

    def finalize(self) -> None:
        self._stopping.set()
        self.engine.stop()
