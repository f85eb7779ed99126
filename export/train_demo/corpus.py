"""The demo LM's corpus: the Python standard library's own source, present on every machine.

The split is by file (a stable hash of the path relative to the stdlib root), so no file
contributes to both training and validation, and it does not depend on the order the
filesystem lists files in.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SKIP_PARTS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    val: list[str]
    train_files: list[str]
    val_files: list[str]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None, max_bytes: int = 200_000) -> list[Path]:
    root = root or stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_PARTS & set(rel.parts) or path.stat().st_size > max_bytes:
            continue
        files.append(path)
    return files


def _is_val(rel: str, val_fraction: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "big") / 2**32
    return bucket < val_fraction


def load_corpus(val_fraction: float = 0.05, root: Path | None = None) -> Corpus:
    root = root or stdlib_root()
    train, val, train_files, val_files = [], [], [], []
    for path in stdlib_files(root):
        rel = str(path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if _is_val(rel, val_fraction):
            val.append(text)
            val_files.append(rel)
        else:
            train.append(text)
            train_files.append(rel)
    return Corpus(train, val, train_files, val_files)
