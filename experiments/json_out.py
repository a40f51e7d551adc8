"""Where a benchmark's JSON goes: one helper, so every script writes and announces it the same way."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | Path, result: dict) -> Path:
    """Write `result` to `path` (parents created) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out
