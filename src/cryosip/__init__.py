"""cryosip: cryo-EM structural heterogeneity as a stochastic inverse problem.

The images are the push-forward of an unknown distribution over conformations through a
random forward operator; cryosip recovers that distribution with a particle Wasserstein
gradient flow of an MMD or KL discrepancy. See ``docs/`` for the mathematics and conventions.

Importing cryosip (or any of its modules) changes nothing in the process: no environment
variable, no plotting backend, no file. The ``cryosip`` command sets what its process needs
(:func:`cryosip.cli.main.configure_process`: XLA's CPU "YNN" fusions off, matplotlib's Agg
backend); a library user who wants the same calls it, or sets ``XLA_FLAGS`` themselves,
before JAX runs its first operation (README, "Library"; ``docs/performance.md``).
"""

__version__ = "0.1.0"
