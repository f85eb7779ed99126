"""Progress bars for the long parts (training, export): tqdm on a terminal, silent elsewhere.

`disable=None` lets tqdm decide: a bar when stderr is a terminal, nothing in logs, CI or
tests. Lines printed through `note` go above the bar instead of breaking it.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def bar(total: int, desc: str, unit: str = "step") -> Any:
    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True, leave=False)


def note(text: str) -> None:
    tqdm.write(text)
