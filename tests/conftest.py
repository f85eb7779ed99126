"""Shared fixtures: tests build their own tiny models; nothing is downloaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

TINY_TEXT = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "hello world, héllo wörld, 你好世界, emoji 🙂🚀, combining e\u0301\n",
    "import os\nimport sys\nfor i in range(10):\n    print(i, os.sep, sys.argv)\n",
]


def build_tiny_lm_repo(
    root: Path, name: str = "tiny-lm", seed: int = 0, target: str = "inprocess", variants: bool = False
) -> Path:
    """A random-weight tiny LM exported through Kiln's real export pipeline (target="triton":
    also the decoupled python-backend entry `<name>-triton`; variants=True: also the optimized,
    int8 and int4 graphs, GPTQ calibrated on TINY_TEXT)."""
    import torch

    from export.checkpoint import save_checkpoint
    from export.models.llama import LlamaLM
    from export.pipeline import export_checkpoint
    from export.tokenizer import train_tokenizer
    from tests.models import tiny_llama_config

    tokenizer = train_tokenizer(TINY_TEXT * 5, vocab_size=320)
    torch.manual_seed(seed)
    model = LlamaLM(tiny_llama_config(tokenizer.get_vocab_size(), max_position_embeddings=256)).eval()
    ckpt = save_checkpoint(model, tokenizer, root / "checkpoints" / name)
    repo = root / "model_repository"
    export_checkpoint(ckpt, repo, name, variants=variants, val_texts=TINY_TEXT, calib_texts=TINY_TEXT, target=target)
    return repo


@pytest.fixture(scope="session")
def tiny_lm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_repo(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_quant_lm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM with every variant, the quantized fused graphs `int8` and `int4` among them."""
    return build_tiny_lm_repo(tmp_path_factory.mktemp("tiny-quant"), variants=True)


def fused_greedy_by_recompute(onnx_file: Path, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens of a fused-contract graph without a kept cache: every step prefills the whole
    sequence into a fresh cache (the reference the engine's in-place decoding must reproduce)."""
    import numpy as np
    import onnxruntime as ort

    from export.verify import _fused_call

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    past = {i.name: i.shape for i in sess.get_inputs() if i.name.startswith("past_")}
    ids = list(prompt)
    for _ in range(n):
        cache = [np.zeros((1, shape[1], len(ids), shape[3]), np.float32) for shape in past.values()]
        logits = _fused_call(sess, np.array([ids], np.int64), np.array([len(ids) - 1]), cache)
        ids.append(int(np.argmax(logits[0])))
    return ids[len(prompt) :]


TINY_VIT = dict(image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_ratio=2.0, stem="conv")


def build_tiny_vision_repo(
    root: Path, name: str = "tiny-vit", seed: int = 0, per_source: int = 2, source_limit: int = 24
) -> Path:
    """A random-weight tiny ViT exported through Kiln's real classifier pipeline, calibrated on
    a few demo scenes (random weights: the numbers are meaningless, the plumbing is real)."""
    import torch

    from export.vision.checkpoint import save_vision_checkpoint
    from export.vision.pipeline import export_classifier
    from export.vision.train import DATASET, demo_contract
    from export.vision.vit import ViT, ViTConfig

    torch.manual_seed(seed)
    cfg = ViTConfig(**TINY_VIT)
    ckpt = save_vision_checkpoint(
        ViT(cfg).eval(),
        "kiln-vit",
        cfg.to_dict(),
        demo_contract(cfg.image_size),
        root / "checkpoints" / name,
        dataset={"name": DATASET, "seed": seed},
    )
    repo = root / "model_repository"
    export_classifier(ckpt, repo, name, per_source=per_source, source_limit=source_limit)
    return repo


@pytest.fixture(scope="session")
def tiny_vision_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vision_repo(tmp_path_factory.mktemp("tiny-vision"))


@pytest.fixture(scope="session")
def tiny_lm_vision_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository holding a tiny LM and a tiny classifier (the gateway serves both)."""
    root = tmp_path_factory.mktemp("tiny-both")
    build_tiny_lm_repo(root)
    return build_tiny_vision_repo(root)


def wait_ready(client, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/readyz').json()}")


from tests.chat_models import chat_repo  # noqa: E402,F401 - session fixture: models with and without chat templates
from tests.families import family_zoo  # noqa: E402,F401 - session fixture: one tiny checkpoint per HF family
from tests.ssm_models import (  # noqa: E402,F401 - session fixtures: tiny Mamba / hybrid checkpoints and entries
    hf_mamba2_dir,
    hf_mamba_dir,
    hf_mamba_entry,
    hybrid_checkpoint,
    hybrid_entry,
    ssm_tokenizer,
)
