"""`kiln evaluate` (perplexity per variant) and `kiln classify` (labels, prediction set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from export.perplexity import variant_perplexity
from export.variants import perplexity, token_windows
from tests.cli.conftest import kiln
from tests.conftest import TINY_TEXT
from tests.live_server import Server

pytestmark = pytest.mark.slow


def test_the_fused_driver_scores_what_the_standard_graph_scores(tiny_lm_repo: Path, tmp_path: Path) -> None:
    from contracts.manifest import TextManifest

    manifest = TextManifest.read(tiny_lm_repo / "tiny-lm")
    fused, n_fused = variant_perplexity(manifest, "fused", TINY_TEXT, window=64)
    fp32, n_fp32 = variant_perplexity(manifest, "fp32", TINY_TEXT, window=64)
    assert n_fused == n_fp32 > 100
    assert fused == pytest.approx(fp32, rel=1e-4)
    # and the standard number is export's own yardstick, unchanged
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(manifest.path(manifest.tokenizer)))
    kv = manifest.state[0].tensors["key.0"]
    windows = token_windows(tok, TINY_TEXT, manifest.bos_token_id, 64, 20_000)
    assert fp32 == perplexity(manifest.graph("fp32").path, windows, manifest.num_layers, int(kv[0]), int(kv[-1]))
    with pytest.raises(ValueError, match="variant 'int8' was not exported"):
        variant_perplexity(manifest, "int8", TINY_TEXT)


def test_kiln_evaluate_prints_every_variant(tiny_lm_repo: Path, tmp_path: Path) -> None:
    text = tmp_path / "val.py"
    text.write_text("".join(TINY_TEXT))
    proc = kiln("evaluate", str(text), "--repository", str(tiny_lm_repo), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["variants"]) == {"fp32", "fused"}
    assert out["variants"]["fused"]["contract"] == "gqa"
    ppl = [v["perplexity"] for v in out["variants"].values()]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-4) and ppl[0] > 1
    table = kiln("evaluate", str(text), "--repository", str(tiny_lm_repo), "--variant", "fused")
    assert table.returncode == 0 and "fused" in table.stdout and "perplexity" in table.stdout
    bad = kiln("evaluate", str(text), "--repository", str(tiny_lm_repo), "--variant", "int8")
    assert bad.returncode == 1 and "not exported" in bad.stderr


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from export.vision.data import make_scenes

    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i, scene in enumerate(make_scenes("test", limit=2)):
        paths.append(folder / f"scene-{i}.png")
        Image.fromarray(scene.pixels).save(paths[-1])
    return paths


def test_kiln_classify_in_process_matches_the_server(
    tiny_lm_vision_repo: Path, cli_server: Server, scenes: list[Path]
) -> None:
    args = ("classify", *map(str, scenes), "--tta-flip", "--json")
    local = kiln(*args, "--repository", str(tiny_lm_vision_repo))
    remote = kiln(*args, "--url", cli_server.url)
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert [r["top"] for r in a["results"]] == [r["top"] for r in b["results"]]
    assert [r["prediction_set"] for r in a["results"]] == [r["prediction_set"] for r in b["results"]]
    assert a["results"][0]["num_views"] == 20
    text = kiln("classify", str(scenes[0]), "--repository", str(tiny_lm_vision_repo), "--top-k", "2")
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{scenes[0]}: ") and lines[0].count("%") == 2
    assert lines[1].startswith("  prediction set (90% coverage): {")


def test_kiln_classify_refuses_a_missing_file(tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    proc = kiln("classify", str(tmp_path / "none.png"), "--repository", str(tiny_lm_vision_repo))
    assert proc.returncode == 1 and "no such image" in proc.stderr
