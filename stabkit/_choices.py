"""The names a user picks a probe loss and a spectrum family by, free of numpy and mpmath.

``stabkit.losses`` and ``stabkit.spectra`` take their names from here, so the help of ``stabkit
compare`` can list them without importing the library (numpy and mpmath cost its ``--help``
0.14 s of 0.50 s).
"""

#: the probe losses of ``stabkit.losses.make_loss``
LOSSES = ("zca", "sqrt", "log", "eigvec", "projector")

#: the matrix families of ``stabkit.spectra.make``, each the name of its generator there
FAMILY_NAMES = ("separated", "cluster", "degenerate", "rank_deficient", "lapack", "wishart", "powerlaw")
