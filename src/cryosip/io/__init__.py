"""Particle files in and out: ``.mrcs`` stacks, RELION STAR 3.0/3.1, cryoSPARC ``.cs``,
cryoDRGN pickles; structure files in (trajectories, multi-model PDB/mmCIF).

Only this package calls the convention converters of :mod:`cryosip.conventions`; every
reader checks its input once and raises :class:`cryosip.errors.InputError`.
"""

from cryosip.io.convert import cryodrgn_to_star, cs_to_star, write_table_star
from cryosip.io.cryodrgn import (
    read_cryodrgn_ctf,
    read_cryodrgn_poses,
    write_cryodrgn_ctf,
    write_cryodrgn_poses,
)
from cryosip.io.cryosparc import read_cs
from cryosip.io.mrc import MrcStack, create_stack, open_stack, read_header, write_map, write_stack
from cryosip.io.particles import (
    ParticleImages,
    ParticleStack,
    read_particles,
    read_table,
    resolve_stack_path,
)
from cryosip.io.star import ParticleTable, read_star, write_star
from cryosip.io.structures import read_multimodel, read_trajectory

__all__ = [
    "MrcStack",
    "ParticleImages",
    "ParticleStack",
    "ParticleTable",
    "create_stack",
    "cryodrgn_to_star",
    "cs_to_star",
    "open_stack",
    "read_cryodrgn_ctf",
    "read_cryodrgn_poses",
    "read_cs",
    "read_header",
    "read_multimodel",
    "read_particles",
    "read_star",
    "read_table",
    "read_trajectory",
    "resolve_stack_path",
    "write_cryodrgn_ctf",
    "write_cryodrgn_poses",
    "write_map",
    "write_stack",
    "write_star",
    "write_table_star",
]
