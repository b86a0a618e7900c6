"""A small TOML writer for the value types a config holds: str, int, float, bool, lists of them and
nested tables. tomllib only reads; this avoids a dependency for the other direction."""

from __future__ import annotations

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
        return basic_string(value)
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
    return key if bare else basic_string(key)


# TOML's short escapes; every other control character (U+0000-U+001F, U+007F), which a basic string
# may not hold as it is, becomes \uXXXX. Everything else is written as it is (the file is UTF-8).
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def basic_string(text: str) -> str:
    """``text`` as a TOML basic string ("..."), which tomllib reads back to ``text``."""
    out = []
    for c in text:
        code = ord(c)
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate has no UTF-8 form and no TOML escape
            raise ValueError(f"cannot write a lone surrogate (U+{code:04X}) to TOML: {text!r}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'

