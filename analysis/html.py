"""HTML tables built from frames, for notebooks and reports (standard library and pandas only).

Cells may come from a sweep folder's files (run names, failure reasons, log lines), so every cell
is escaped unless its column holds markup the caller built (a progress bar).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping, Sequence

import pandas as pd

NOTE_STYLE = "margin:0;font-size:85%"  # the <pre> of a row's note


def _style(*parts: str | None) -> str:
    text = ";".join(p for p in parts if p)
    return f' style="{html.escape(text)}"' if text else ""


def _background(colour: str | None) -> str | None:
    return f"background:{colour}" if colour else None


def _text(value) -> str:
    """A cell as text: missing values (None, NaN, NA) are empty."""
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value)


def html_table(
    frame: pd.DataFrame,
    colours: Sequence[str | None] | None = None,
    *,
    cell_colours: Mapping[str, Mapping[str, str]] | None = None,
    markup: Collection[str] = (),
    cell_style: str = "",
    attrs: str = "",
    notes: Sequence[str] | None = None,
) -> str:
    """Return `frame` as an HTML <table>: its columns as the header row, one row per frame row.

    Every header and cell is escaped but the cells of the columns in `markup` (HTML the caller
    built); missing values are empty cells. colours: a background per row (None or "": none).
    cell_colours: {column: {cell text: background}}, for single cells. cell_style: the style of
    every th and td. attrs: the <table> tag's attributes, as written (e.g. "class=claims").
    notes: per row, text shown under it across the whole row in a <pre> (empty: no line).
    """
    by_cell = cell_colours or {}
    head = "".join(f"<th{_style(cell_style)}>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False, name=None)):
        cells = []
        for column, value in zip(frame.columns, row):
            text = _text(value)
            colour = by_cell.get(column, {}).get(text)
            shown = text if column in markup else html.escape(text)
            cells.append(f"<td{_style(cell_style, _background(colour))}>{shown}</td>")
        body.append(f"<tr{_style(_background(colours[i] if colours is not None else None))}>{''.join(cells)}</tr>")
        if notes is not None and notes[i]:
            body.append(
                f'<tr><td colspan="{len(frame.columns)}"><pre{_style(NOTE_STYLE)}>{html.escape(notes[i])}</pre></td></tr>'
            )
    table = f"<table {attrs}>" if attrs else "<table>"
    return f"{table}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
