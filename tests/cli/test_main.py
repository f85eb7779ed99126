"""The `kiln` command: a failure the user can act on is one line and exit status 1, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def kiln(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_an_export_that_fails_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    proc = kiln("export", "--checkpoint", str(tmp_path / "nowhere"), "--repository", str(tmp_path / "repo"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln export: error: "), proc.stderr
    assert "no config.json" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_an_unsupported_checkpoint_names_the_reason(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (ckpt / "tokenizer.json").write_text("{}")
    proc = kiln("export", "--checkpoint", str(ckpt), "--repository", str(tmp_path / "repo"))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_kiln_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = kiln("export", "--checkpoint", str(tmp_path / "nowhere"), KILN_DEBUG="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
