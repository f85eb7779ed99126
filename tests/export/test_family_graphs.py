"""Every family's standard and fused graphs agree with transformers to 1e-4, driven as served.

One schedule per graph: row 0 prefilled in one call, row 1 in two chunks (the second attending
to the first through the cache), then both rows decoded together at different lengths, long
enough to cross the sliding windows of the windowed families. Each step's logits are compared
with transformers' full forward over the same tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contracts.manifest import TextManifest
from tests.families import FAMILIES, SPECS
from tests.graph_drivers import DRIVERS, session

pytestmark = pytest.mark.slow
TOL = 1e-4


def _sequences(vocab: int, lengths: tuple[int, ...], seed: int = 3) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def _reference(zoo, name: str, seqs: list[list[int]]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    hf = zoo.reference(name)
    with torch.no_grad():
        return [hf(torch.tensor([s])).logits[0].numpy() for s in seqs]


def drive_and_compare(zoo, name: str, variant: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Max |Δlogits| per phase of the served schedule (see the module docstring)."""
    entry = zoo.entry(name)
    seqs = _sequences(TextManifest.read(entry).vocab_size, (20, 17))
    want = _reference(zoo, name, seqs)
    driver = DRIVERS[variant](entry, variant)
    errors: dict[str, float] = {}

    def check(phase: str, got: np.ndarray, row: int, length: int) -> None:
        err = float(np.abs(got - want[row][length - 1]).max())
        errors[phase] = max(errors.get(phase, 0.0), err)

    check("prefill", driver.extend(0, seqs[0][:14]), 0, 14)
    check("prefill_chunk_1", driver.extend(1, seqs[1][:5]), 1, 5)
    check("prefill_chunk_2", driver.extend(1, seqs[1][5:11]), 1, 11)
    for step in range(6):
        logits = driver.decode([seqs[0][14 + step], seqs[1][11 + step]])
        check("decode", logits[0], 0, 15 + step)
        check("decode", logits[1], 1, 12 + step)
    return errors


@pytest.mark.parametrize("variant", ["fp32", "fused"])
@pytest.mark.parametrize("name", FAMILIES)
def test_graph_matches_transformers_as_served(family_zoo, name: str, variant: str) -> None:  # type: ignore[no-untyped-def]
    errors = drive_and_compare(family_zoo, name, variant)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("name", FAMILIES)
def test_standard_graph_prefills_rows_of_different_lengths_in_one_call(family_zoo, name: str) -> None:  # type: ignore[no-untyped-def]
    """A right-padded batch: every real position of both rows has transformers' logits."""
    manifest = TextManifest.read(family_zoo.entry(name))
    seqs = _sequences(manifest.vocab_size, (18, 11), seed=5)
    want = _reference(family_zoo, name, seqs)
    ids = np.zeros((2, 18), np.int64)
    mask = np.zeros((2, 18), np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)], mask[r, : len(s)] = s, 1
    feeds = {"input_ids": ids, "position_ids": np.tile(np.arange(18), (2, 1)), "attention_mask": mask}
    for layer in manifest.state:
        for tensor in layer.tensors:
            feeds[f"past_{tensor}"] = np.zeros((2, *layer.slot_shape(tensor, 0)), np.float32)
    logits = session(manifest.graph("fp32").path).run(["logits"], feeds)[0]
    for r, s in enumerate(seqs):
        assert np.abs(logits[r, : len(s)] - want[r]).max() < TOL, (name, r)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_report_verifies_both_graphs(family_zoo, name: str) -> None:  # type: ignore[no-untyped-def]
    report = family_zoo.export(name)
    assert report["source"] == "huggingface"
    assert report["config"]["family"] == SPECS[name].config.removesuffix("Config").lower()
    for graph in ("fp32", "fused"):
        assert report["verification"][graph]["passed"], graph
        assert report["verification"][graph]["max_abs_logits"] <= TOL


def test_manifest_carries_every_eos_id(family_zoo) -> None:  # type: ignore[no-untyped-def]
    for name, eos in (("llama3", (2, 5)), ("qwen2", (2, 3)), ("mistral", (2,))):
        assert TextManifest.read(family_zoo.entry(name)).eos_token_ids == eos, name


def test_checkpoints_cover_the_storage_formats(family_zoo) -> None:  # type: ignore[no-untyped-def]
    """The zoo holds a sharded, an fp16 and a bf16 directory (so the parity above covers them)."""
    from safetensors import safe_open

    sharded = family_zoo.checkpoint("llama3")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (sharded / "model.safetensors").exists()
    for name, dtype in (("llama-bias", "F16"), ("qwen2", "BF16")):
        with safe_open(str(family_zoo.checkpoint(name) / "model.safetensors"), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {dtype}, name


def test_longrope_context_is_capped_where_transformers_changes_frequencies(family_zoo) -> None:  # type: ignore[no-untyped-def]
    manifest = TextManifest.read(family_zoo.entry("phi3"))
    assert manifest.max_position_embeddings == 64  # original_max_position_embeddings, not 128
    assert "original_max_position_embeddings=64" in family_zoo.export("phi3")["config"]["notes"][0]
