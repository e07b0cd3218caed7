"""JSON Lines files (manifests, layouts): one JSON object per line, errors naming the line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from earthsynth.errors import InputError


def read_jsonl(path: str | os.PathLike, allow_cut_last_line: bool = False) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of `path`.

    A line that is not a JSON object raises an InputError naming the file and the line, except,
    with `allow_cut_last_line`, a last line cut short by a crash while it was written (it is
    dropped, so an interrupted run can resume).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read ({getattr(err, 'strerror', None) or err})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if allow_cut_last_line and number == len(lines):
                break
            raise InputError(path, f"line {number}: not valid JSON ({err.msg})") from None
        except RecursionError:  # json's decoder recurses once per level of [ or {
            raise InputError(path, f"line {number}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise InputError(path, f"line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows
