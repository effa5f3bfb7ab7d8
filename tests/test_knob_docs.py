"""The knob tables of docs/pretraining.md say what the methods' classes default to: a
method's paper recipe lives in its class signature, and the docs are held to it."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from pretrain.base import PretrainModule
from pretrain.asit import ASiT
from pretrain.eat import EAT
from pretrain.mspm import MSPM

DOC = Path(__file__).resolve().parents[1] / "docs/pretraining.md"
SECTIONS = {"## MSPM (SSAST): the knobs": MSPM, "## ASiT: the knobs": ASiT, "## EAT: the knobs": EAT}


def defaults(cls: type) -> dict[str, Any]:
    """Every constructor default of ``cls``, its own winning over its bases' (``**kwargs``); an
    options object's fields as ``name.field`` (``optimization.lr``, ``gmml.align``)."""
    found: dict[str, Any] = {}
    for klass in reversed([k for k in cls.__mro__ if issubclass(k, PretrainModule)]):
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                found[name] = parameter.default
                if dataclasses.is_dataclass(parameter.default):
                    found |= {f"{name}.{field}": value for field, value in vars(parameter.default).items()}
    return found


def as_value(text: str) -> Any:
    """A table cell's value: numbers (commas of thousands allowed), tuples/lists of
    numbers, ``none`` for Python's ``None``, otherwise the word without backticks."""
    text = text.strip().strip("`")
    if text == "none":
        return None
    if text[:1] in "([" and text[-1:] in ")]":
        return [as_value(part) for part in text[1:-1].split(",")]
    try:
        return float(text.replace(",", "")) if re.fullmatch(r"[-+0-9.,e]+", text) else text
    except ValueError:
        return text


def as_default(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [as_default(item) for item in value]
    return value


def split_cells(text: str) -> list[str]:
    """``a, (b, c), d`` → ``[a, (b, c), d]``; ``a → b`` → ``[a, b]``."""
    parts, depth, current = [], 0, ""
    for char in text.replace("→", ","):
        depth += char in "([" and 1 or (char in ")]" and -1 or 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part.strip() for part in [*parts, current]]


def documented(section: str) -> list[tuple[str, str]]:
    """``(knob, documented default)`` of every single knob of a section's table."""
    text = DOC.read_text()
    body = text[text.index(section):]
    body = body[:body.index("\n## ", 1)] if "\n## " in body[1:] else body
    rows = []
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = [name.strip("` ") for name in split_cells(cells[0])]
        values = split_cells(cells[1])
        if len(names) == len(values):
            rows.extend(zip(names, values))
    return rows


@pytest.mark.parametrize("section", SECTIONS)
def test_the_knob_tables_give_the_class_defaults(section):
    cls, checked = SECTIONS[section], 0
    own = defaults(cls)
    for name, value in documented(section):
        if name not in own or as_value(value) in ("auto", "all", "encoder width"):
            continue  # the trainer's, or a default computed at build time
        assert as_value(value) == as_default(own[name]), f"{cls.__name__}.{name}: docs say {value}, the class {own[name]!r}"
        checked += 1
    assert checked >= 8, f"only {checked} knobs of {section!r} read"
