"""The reconstruction pipeline: particle files in, recovered measure and its report out."""

from cryosip.pipeline.reconstruct import fit_flow
from cryosip.pipeline.runfolder import LoadedRun, load_run

__all__ = ["LoadedRun", "fit_flow", "load_run"]
