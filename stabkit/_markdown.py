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


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
