"""One EngineConfig: the gateway's settings, Triton's config.pbtxt parameters and back."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from google.protobuf import text_format

from contracts.engine import EngineConfig
from export.triton_repo import lm_python_config
from service.settings import Settings


def test_settings_defaults_are_the_engine_defaults() -> None:
    assert Settings().engine_config() == EngineConfig()
    tuned = Settings(max_batch=3, prefill_chunk=2, lm_variant="fp32").engine_config()
    assert (tuned.max_batch, tuned.prefill_chunk, tuned.lm_variant) == (3, 2, "fp32")


def test_parameters_round_trip() -> None:
    config = EngineConfig(max_batch=5, max_seq_len=300, lm_variant="int8", fault_step_delay_ms=2.5)
    params = config.to_parameters()
    assert params["KILN_MAX_BATCH"] == "5" and params["KILN_LM_VARIANT"] == "int8"
    assert EngineConfig.from_parameters(params) == config
    assert EngineConfig.from_parameters({"KILN_MAX_QUEUE": "3", "UNRELATED": "x"}) == EngineConfig(max_queue=3)


def test_tritons_python_model_config_carries_exactly_the_engine_defaults() -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    cfg = text_format.Parse(lm_python_config("m-triton"), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert EngineConfig.from_parameters(params) == EngineConfig()
    assert set(params) == {"KILN_" + k.upper() for k in asdict(EngineConfig())}
    override = text_format.Parse(lm_python_config("m-triton", {"KILN_MAX_BATCH": "2"}), model_config_pb2.ModelConfig())
    assert EngineConfig.from_parameters({k: v.string_value for k, v in override.parameters.items()}).max_batch == 2
