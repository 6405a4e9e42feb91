"""cryosip: cryo-EM structural heterogeneity as a stochastic inverse problem.

The images are the push-forward of an unknown distribution over conformations through a
random forward operator; cryosip recovers that distribution with a particle Wasserstein
gradient flow of an MMD or KL discrepancy. See ``docs/`` for the mathematics and conventions.

On import, cryosip turns off XLA's experimental CPU "YNN" fusions (appending
``--xla_cpu_experimental_ynn_fusion_type=`` to ``XLA_FLAGS`` unless the variable already
names that flag): they make the backward pass of the projector about 3x slower and a flow
step about 1.4x slower on CPU (``benchmarks/forward_speed.py``). It takes effect only if
JAX's CPU backend has not been initialised before cryosip is imported.
"""

import os as _os

_YNN = "--xla_cpu_experimental_ynn_fusion_type"
if _YNN not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + f" {_YNN}=").strip()

__version__ = "0.1.0"
