"""``stabkit methods``: the registry of backward rules — defaults, parameter domains, papers."""

from __future__ import annotations

import json

import typer

from ._common import user_errors


def print_version(value: bool):
    if value:
        from stabkit import __version__

        print(f"stabkit {__version__}")
        raise typer.Exit()


@user_errors
def methods_command(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per method per line."),
):
    """List every gradient method: name, parameters with defaults and accepted values, paper, summary,
    and which default it is (the library's when a call names none; `stabkit train`'s)."""
    from stabkit import methods

    default_of = {}
    for spec, role in ((methods.DEFAULT, "a function or layer that names none"), (methods.TRAIN_DEFAULT, "stabkit train")):
        default_of.setdefault(methods.spec(spec).name, []).append(f"{role} ({methods.spec(spec)})")
    for method in methods.REGISTRY.values():
        params = {key: {"default": method.defaults[key], "domain": str(method.domains[key])} for key in method.defaults}
        if as_json:
            print(json.dumps({"name": method.name, "params": params, "paper": method.paper, "summary": method.summary,
                              "default_of": default_of.get(method.name, [])}))
            continue
        print(f"{method.name}: {method.summary}")
        for role in default_of.get(method.name, []):
            print(f"    default of {role}")
        print(f"    paper: {method.paper}")
        for key, info in params.items():
            print(f"    {key} = {info['default']}  ({info['domain']})")
