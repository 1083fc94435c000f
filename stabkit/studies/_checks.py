"""Grid values shared by the study kinds: lists, integers, choices and spectrum-family entries,
each checked with a ValueError that names the grid key, the value and what is allowed; every
value's type checked against its default's (:func:`like_defaults`); and the one text form of a
family variant (``cluster(delta=1e-08)``) that cell ids, rows and reports use."""

from __future__ import annotations

import numbers

import pandas as pd

from ..validation import INT64_MAX, is_count, is_real

#: what a default's type asks of a value: (test, the phrase naming it)
_LIKE = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: is_count(v, -INT64_MAX), "an integer"),
    "real": (is_real, "a finite number"),
    "text": (lambda v: isinstance(v, str), "text"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "table": (lambda v: isinstance(v, dict), "a table"),
}


def _kind_of(value) -> str | None:
    for name, python_type in (("bool", bool), ("int", numbers.Integral), ("real", numbers.Real), ("text", str),
                              ("list", list), ("table", dict)):
        if isinstance(value, python_type):
            return name
    return None


def like_defaults(grid: dict, defaults: dict) -> dict:
    """``grid`` with each value of a key in ``defaults`` checked against its default's type, before a
    kind's own checks compare or convert it (a ValueError naming the key and the value): true/false,
    an integer (an integral float too), a finite number, text, a table, or a list (a scalar becomes a
    one-element list) whose values have the type the default's values share (if they do), none twice,
    empty only if the default is. A default of None (the kind decides) is not checked."""
    out = dict(grid)
    for key, value in grid.items():
        default = defaults.get(key)
        if isinstance(default, list):
            value = out[key] = value if isinstance(value, list) else [value]
            if default:
                as_list(key, value)
            kinds = {_kind_of(item) for item in default}
            if len(kinds) == 1:  # not where they differ (a family is a name or a table)
                (item_kind,) = kinds
                for item in value:
                    _check_like(key, item, item_kind, ": each value")
            no_duplicates(key, value)
        elif default is not None:
            _check_like(key, value, _kind_of(default), "")
    return out


def _check_like(key: str, value, kind: str | None, each: str) -> None:
    test, phrase = _LIKE.get(kind, (lambda v: True, ""))
    if not test(value):
        raise ValueError(f"grid key {key!r}{each} must be {phrase}, got {value!r}")


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


def check_buildable(families: list[dict], d_values: list[int], seed: int, usable=None) -> None:
    """Impossible parameters (unknown family parameter, cluster of k > d, ...) surface here, before
    any work: every variant is built once at every size (cheap next to a ground truth). A variant
    that cannot be built at any size of the grid is an error; one that fails only at some sizes
    fails only those cells. ``usable(spectrum)``: the kind's ValueError for a spectrum it cannot use."""
    from .. import spectra

    for entry in families:
        params = {k: v for k, v in entry.items() if k != "family"}
        errors = []
        for d in d_values:
            try:
                built = spectra.make(entry["family"], d, seed=seed, dtype="float64", **params)
                if usable is not None:
                    usable(built)
            except (ValueError, TypeError) as exc:
                errors.append(f"at d={d}: {exc}")
        if len(errors) == len(d_values):
            raise ValueError(f"grid key 'families': {family_label(entry)} cannot be built: {errors[0]}")


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
