"""Grid values shared by the study kinds: lists, integers, choices and spectrum-family entries,
each checked with a ValueError that names the grid key, the value and what is allowed; and the
one text form of a family variant (``cluster(delta=1e-08)``) that cell ids, rows and reports use."""

from __future__ import annotations

import pandas as pd

from ..validation import is_count


def as_list(key: str, value) -> list:
    """``value`` as a non-empty list (a scalar becomes a one-element list)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"grid key {key!r} is empty: give at least one value")
    return items


def no_duplicates(key: str, items: list) -> None:
    seen = set()
    for item in items:
        marker = repr(item)
        if marker in seen:
            raise ValueError(f"grid key {key!r}: {item!r} appears twice")
        seen.add(marker)


def int_list(key: str, value, minimum: int, what: str) -> list[int]:
    out = []
    for item in as_list(key, value):
        if not is_count(item, minimum):
            raise ValueError(f"grid key {key!r}: {what} must be an integer in [{minimum}, 2^63 − 1], got {item!r}")
        out.append(int(item))
    no_duplicates(key, out)
    return out


def choice_list(key: str, value, allowed) -> list[str]:
    out = []
    for item in as_list(key, value):
        if item not in allowed:
            raise ValueError(f"grid key {key!r}: unknown value {item!r} (allowed: {', '.join(allowed)})")
        out.append(item)
    no_duplicates(key, out)
    return out


def family_entry(item) -> dict:
    """A family name or a table ``{family="cluster", delta=1e-8}`` → the table, checked against
    ``stabkit.spectra.FAMILIES`` (its parameters are checked when the spectrum is built)."""
    from .. import spectra

    if isinstance(item, str):
        entry = {"family": item}
    elif isinstance(item, dict) and isinstance(item.get("family"), str):
        entry = dict(item)
    else:
        raise ValueError(
            f"grid key 'families': each entry is a family name or a table with a 'family' key, got {item!r}"
        )
    if entry["family"] not in spectra.FAMILIES:
        raise ValueError(
            f"grid key 'families': unknown spectrum family {entry['family']!r} "
            f"(allowed: {', '.join(spectra.FAMILIES)})"
        )
    for key, value in entry.items():
        if key != "family" and (isinstance(value, (list, dict)) or value is None):
            raise ValueError(f"grid key 'families': parameter {key}={value!r} of {entry['family']!r} must be a scalar")
    return entry


def family_params_text(entry: dict) -> str:
    """``{"family": "cluster", "delta": 1e-8}`` → ``"delta=1e-08"`` (sorted, empty if none)."""
    return ",".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(entry.items()) if k != "family"
    )


def family_label(entry: dict) -> str:
    params = family_params_text(entry)
    return f"{entry['family']}({params})" if params else entry["family"]


def variant_labels(df: pd.DataFrame) -> pd.Series:
    """``family_label`` of every row of a results table (columns ``family``, ``family_params``)."""
    params = df["family_params"].fillna("")
    return df["family"].where(params == "", df["family"] + "(" + params + ")")
