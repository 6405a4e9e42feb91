"""Particle measures ``sum_i w_i delta_{x_i}`` over conformation space and the scaling rule."""

from cryosip.measures.particles import ParticleMeasure, particle_velocity

__all__ = ["ParticleMeasure", "particle_velocity"]
