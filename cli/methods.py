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
    """List every gradient method: name, parameters with defaults and accepted values, paper, summary."""
    from stabkit.methods import REGISTRY

    for method in REGISTRY.values():
        params = {key: {"default": method.defaults[key], "domain": str(method.domains[key])} for key in method.defaults}
        if as_json:
            print(json.dumps({"name": method.name, "params": params, "paper": method.paper, "summary": method.summary}))
            continue
        print(f"{method.name}: {method.summary}")
        print(f"    paper: {method.paper}")
        for key, info in params.items():
            print(f"    {key} = {info['default']}  ({info['domain']})")
