"""The reconstruction pipeline: particle files in, recovered measure and its report out."""

from cryosip.pipeline.reconstruct import fit_flow

__all__ = ["fit_flow"]
