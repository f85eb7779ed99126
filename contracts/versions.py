"""One rule for every versioned file: a reader refuses a version it does not know."""

from __future__ import annotations


class ContractError(ValueError):
    """A file written by export cannot be read by this service (unknown version, missing field)."""


def check_version(data: dict, key: str, supported: int, source: str, default: int | None = None) -> int:
    """The file's version, or ContractError naming the file, the version found and what to do."""
    found = data.get(key, default)
    if found is None:
        raise ContractError(
            f"{source} has no `{key}`: it was written by an older Kiln; re-export the model with `kiln export`"
        )
    if found != supported:
        raise ContractError(
            f"{source} has {key} {found!r}, but this Kiln reads version {supported}; "
            "re-export the model with this Kiln's `kiln export` (or serve it with the Kiln that wrote it)"
        )
    return int(found)
