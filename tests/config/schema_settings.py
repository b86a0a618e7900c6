"""The numeric settings of the config schema with their bounds, for the tests that probe them."""

import dataclasses
import typing

from fmicl_engine.config import schema


def numeric_settings():
    """(dotted key, type, lower bound, upper bound, the lower bound's kind) of every int and float
    setting in schema.py."""
    found = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + f.name + ".")
            elif hints[f.name] in (int, float):
                m = f.metadata
                low, low_kind = (m["ge"], "ge") if m["ge"] is not None else (m["gt"], "gt")
                high, high_kind = (m["le"], "le") if m["le"] is not None else (m["lt"], "lt")
                found.append((prefix + f.name, hints[f.name], low, high, low_kind, high_kind))

    walk(schema.Config, "")
    return found
