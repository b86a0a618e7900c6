"""A small TOML writer for the value types a config holds: str, int, float, bool, lists of them and
nested tables. tomllib only reads; this avoids a dependency for the other direction."""

from __future__ import annotations

import json
import math
from typing import Any


def format_value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form; "1e-05" is valid TOML
    if isinstance(value, str):
        # JSON string escapes (\" \\ \n \t \uXXXX) are all valid in TOML basic strings.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def dumps(table: dict[str, Any]) -> str:
    """TOML text for a nested dict: scalars of a table first, then its sub-tables as [a.b] headers."""
    lines: list[str] = []

    def emit(tbl: dict[str, Any], prefix: tuple[str, ...]) -> None:
        scalars = {k: v for k, v in tbl.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in tbl.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_key(k) for k in prefix) + "]")
        for key, value in scalars.items():
            lines.append(f"{_key(key)} = {format_value(value)}")
        for key, sub in tables.items():
            emit(sub, prefix + (key,))

    emit(table, ())
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if bare else json.dumps(key)
