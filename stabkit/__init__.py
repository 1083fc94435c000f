"""stabkit: how wrong is each differentiable-eigendecomposition gradient, and does it matter?

Modules: ``spectra`` makes matrices, ``losses`` defines probe losses, ``methods`` holds the
backward rules, ``reference`` is the certified high-precision truth, ``metrics`` measures.
"""

__version__ = "0.1.0"
