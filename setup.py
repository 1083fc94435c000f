"""The one packaging fact pyproject.toml cannot state (all metadata is there): the repository's
top-level ``cli/`` folder is installed as the subpackage ``stabkit.cli``, so ``pip install .``
puts exactly one top-level package, ``stabkit``, into site-packages. Subpackages are discovered,
so a new one under ``stabkit/`` or ``cli/`` cannot be left out of the wheel."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["stabkit", "stabkit.*"]),
              "stabkit.cli", *(f"stabkit.cli.{name}" for name in find_packages("cli"))],
    package_dir={"stabkit.cli": "cli"},
)
