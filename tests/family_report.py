"""Markdown table of each family's max |Δlogits| against transformers, both graphs, as served.

    .venv/bin/python -m tests.family_report        # the table in docs/models.md comes from this

Same tiny random checkpoints and schedule as tests/export/test_family_graphs.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.export.test_family_graphs import drive_and_compare
from tests.families import FAMILIES, SPECS, FamilyZoo


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kiln-families-") as tmp:
        report(FamilyZoo(Path(tmp)))


def report(zoo: FamilyZoo) -> None:
    phases = ("prefill", "prefill_chunk_1", "prefill_chunk_2", "decode")
    print("| checkpoint | saved as | graph | " + " | ".join(phases) + " |")
    print("|---|---|---|" + "---|" * len(phases))
    for name in FAMILIES:
        spec = SPECS[name]
        saved = spec.dtype
        if spec.max_shard_size:
            saved += f", sharded ({spec.max_shard_size})"
        for variant in ("fp32", "fused"):
            errors = drive_and_compare(zoo, name, variant)
            cells = " | ".join(f"{errors[p]:.1e}" for p in phases)
            print(f"| {name} | {saved} | {'standard' if variant == 'fp32' else 'fused'} | {cells} |")


if __name__ == "__main__":
    main()
