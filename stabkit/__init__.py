"""stabkit: how wrong is each differentiable-eigendecomposition gradient, and does it matter?

Modules: ``spectra`` makes matrices, ``losses`` defines probe losses, ``methods`` holds the
backward rules, ``reference`` is the certified high-precision truth, ``metrics`` measures,
``stabkit.torch`` is ``torch.linalg.eigh``/``svd`` with a chosen backward, ``monitor`` watches a
training run. The names below load on first use, so ``import stabkit`` (and ``stabkit --help``)
imports neither torch nor pandas::

    import stabkit
    A = stabkit.spectra.make("cluster", 8, delta=1e-8).matrix
    truth = stabkit.ground_truth(A, stabkit.losses.make_loss("zca", 8))   # certified ∂L/∂A
    s = stabkit.spec("taylor:K=19")                                       # a validated method choice
    table = stabkit.compare.compare(A, "zca", ["analytic", str(s)])      # methods against the truth

``stabkit.torch`` is deliberately not among them: ``from stabkit import *`` must not shadow torch.
"""

from __future__ import annotations

import importlib
import os
import sys

__version__ = "0.1.0"

#: public name → the module that defines it (imported on first access)
_FROM = {
    "spec": "stabkit.methods",
    "Spec": "stabkit.methods",
    "Method": "stabkit.methods",
    "ground_truth": "stabkit.reference",
    "Truth": "stabkit.reference",
    "watch": "stabkit.monitor",
    "InputError": "stabkit.errors",
    "MethodSpecError": "stabkit.errors",
    "StudyFileError": "stabkit.errors",
    "EigensolverError": "stabkit.errors",
    "UnsupportedDerivativeError": "stabkit.errors",
}
#: submodules reachable as attributes without an import statement (``stabkit.methods.get(…)``);
#: ``compare`` is the module (``stabkit.compare.compare``): a function of the same name would be
#: replaced by the module as soon as anything imports ``stabkit.compare``
_MODULES = ("compare", "errors", "losses", "methods", "metrics", "spectra")

__all__ = ["__version__", *_MODULES, *_FROM]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds the attribute too
    if name in _FROM:
        value = getattr(importlib.import_module(_FROM[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# --- ``stabkit.cli`` in a source checkout -----------------------------------------------------------
# The command line lives in the repository's top-level ``cli/`` folder; ``pip install .`` installs it
# as the subpackage ``stabkit.cli`` (package-dir mapping in setup.py). In a checkout there is no
# ``stabkit/cli/``: this finder resolves ``stabkit.cli`` to the ``cli/`` next to *this* package, so
# a worktree run with PYTHONPATH=<worktree> gets its own cli/, whatever an editable install points at.
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE_CLI = os.path.join(os.path.dirname(_HERE), "cli")


class _SourceCliFinder:
    """Meta-path finder for exactly one name, ``stabkit.cli``, in a source checkout."""

    root = _SOURCE_CLI

    @classmethod
    def find_spec(cls, fullname: str, path=None, target=None):
        if fullname != "stabkit.cli":
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(fullname, os.path.join(cls.root, "__init__.py"),
                                       submodule_search_locations=[cls.root])


def _install_source_cli_finder() -> None:
    installed = os.path.isdir(os.path.join(_HERE, "cli"))  # a wheel: stabkit/cli/ is a real subpackage
    checkout = (os.path.isfile(os.path.join(_SOURCE_CLI, "__init__.py"))
                and os.path.isfile(os.path.join(os.path.dirname(_HERE), "pyproject.toml")))
    # one finder per process, the latest stabkit's (a reload replaces it rather than stacking)
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__qualname__", None) != "_SourceCliFinder"]
    if checkout and not installed:
        sys.meta_path.insert(0, _SourceCliFinder)


_install_source_cli_finder()
