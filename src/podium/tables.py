"""Text tables: the one renderer behind every table podium prints or writes.

Two styles of the same layout (a header, a rule, one line per row, columns padded to width):

    markdown   a pipe table that reads as plain text too (`podium runs`, write-ups); a cell is
               `str(value)` with `|` escaped, so callers format their numbers themselves
    plain      columns two spaces apart, trailing blanks cut (Kaggle listings); None is an empty
               cell and a float shows 6 significant digits (API scores carry float noise)

In both, a newline inside a cell becomes a space: one row stays one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

__all__ = ["render_table", "numeric_columns"]

Style = Literal["markdown", "plain"]


def numeric_columns(rows: Sequence[Sequence[Any]], n_columns: int) -> list[int]:
    """The columns whose cells are all numbers or None, at least one a number."""
    return [
        i
        for i in range(n_columns)
        if all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        and any(isinstance(row[i], (int, float)) for row in rows)
    ]


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _plain_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\n", " ")


_CELLS = {"markdown": _markdown_cell, "plain": _plain_cell}


def render_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    style: Style = "markdown",
    right: Iterable[int] | None = None,
) -> str:
    """A table of `rows` (one value per header column) in `style`; the columns whose indices are
    in `right` are right-aligned, by default (None) the numeric ones."""
    rows = [list(row) for row in rows]
    right = set(numeric_columns(rows, len(header)) if right is None else right)
    if style not in _CELLS:
        raise ValueError(f"table style {style!r}: use 'markdown' or 'plain'")
    cells = [[_CELLS[style](value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def padded(values: list[str]) -> list[str]:
        return [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]

    if style == "markdown":
        lines = ["| " + " | ".join(padded(values)) + " |" for values in [list(header), *cells]]
        # A colon at the right end of a column's rule right-aligns it in rendered Markdown.
        rule = [
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        ]
        lines.insert(1, "|" + "|".join(rule) + "|")
    else:
        lines = ["  ".join(padded(values)).rstrip() for values in [list(header), *cells]]
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
