"""cryosip: cryo-EM structural heterogeneity as a stochastic inverse problem.

The images are the push-forward of an unknown distribution over conformations through a
random forward operator; cryosip recovers that distribution with a particle Wasserstein
gradient flow of an MMD or KL discrepancy. See ``docs/`` for the mathematics and conventions.
"""

__version__ = "0.1.0"
