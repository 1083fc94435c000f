"""Holds the sitecustomize.py that ``stabkit watch`` puts first on a watched process's PYTHONPATH."""
