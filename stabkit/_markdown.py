"""A Markdown table from a DataFrame without extra dependencies (pandas needs tabulate for it)."""

from __future__ import annotations

import math

import pandas as pd


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def cell(text: str) -> str:
    """A table cell's text: a raw ``|`` would end the cell, so it is escaped (``\\|``, rendered as ``|``)."""
    return str(text).replace("\\|", "|").replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    header = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(fmt(v, digits)) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
