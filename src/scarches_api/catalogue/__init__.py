"""The atlas catalogue: per-atlas facts (keys, pretrained model folders) as data, not code."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from scarches_api.errors import ConfigError


@lru_cache(maxsize=1)
def load_catalogue() -> dict[str, dict[str, Any]]:
    """All atlas entries, keyed by lower-cased display name."""
    text = resources.files(__package__).joinpath("atlases.json").read_text(encoding="utf-8")
    entries = json.loads(text)["atlases"]
    return {entry["name"].lower(): entry for entry in entries}


def atlas_entry(name: str) -> dict[str, Any]:
    """The catalogue entry for an atlas display name (case-insensitive)."""
    if not isinstance(name, str):
        raise ConfigError(
            f"key 'atlas': must be an atlas name (a string), not a JSON {type(name).__name__}", details={"keys": ["atlas"]}
        )
    catalogue = load_catalogue()
    try:
        return catalogue[name.lower()]
    except KeyError:
        known = ", ".join(sorted(e["name"] for e in catalogue.values()))
        raise ConfigError(f"key 'atlas': unknown atlas {name!r}; known atlases: {known}") from None
