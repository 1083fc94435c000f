"""The ``stabkit`` command line: a thin Typer layer over the library.

This top-level folder is the subpackage ``stabkit.cli``: ``pip install .`` maps it there (setup.py),
and in a source checkout ``stabkit/__init__.py`` resolves ``stabkit.cli`` to it. Import it as
``stabkit.cli``, never as a top-level ``cli``."""
