r"""The cryo-EM random forward operator ``y = G(x, w) + sigma * eps``.

``x`` is a conformation (``model.structure_at(x)`` gives the atoms), ``w`` an
:class:`ImageNuisance` drawn from the :class:`NuisancePrior`, ``G`` the clean image of
:mod:`cryosip.forward.image_model`. The batched methods build the atoms once per ``x`` and
render every nuisance from them (the hot path of the flows). The projection window
(:mod:`cryosip.forward.projector`) is sized once, at construction, from the structures at
the corners and centre of the conformation box, enlarged by ``window_margin`` (x1.15).
``footprint_pixels`` opts into per-atom footprints instead of the dense product (slower on
XLA:CPU; see :class:`~cryosip.forward.projector.GaussianProjector`).

>>> import jax, jax.numpy as jnp
>>> from cryosip.structures.base import AbstractConformationModel, Atoms
>>> class Blob(AbstractConformationModel):
...     lower: jax.Array
...     upper: jax.Array
...     def structure_at(self, x):
...         pos = jnp.array([[-5.0, 0, 0], [5.0, 0, 0]]) * (1 + x[0])
...         return Atoms(pos, jnp.ones(2), jnp.full(2, 2.0))
>>> blob = Blob(jnp.zeros(1), jnp.ones(1))
>>> op = CryoEMOperator(blob, ImageConfig(16, 2.0), Optics(), NuisancePrior(), 0.1)
>>> w = op.sample_nuisance(jax.random.key(0), 4)
>>> op.clean_grid(jnp.zeros((3, 1)), w).shape
(3, 4, 16, 16)
"""

from __future__ import annotations

import itertools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics
from cryosip.forward.image_model import ImageModel
from cryosip.forward.pose import ImageNuisance, NuisancePrior
from cryosip.forward.projector import GaussianProjector, window_pixels_for
from cryosip.operators import AbstractRandomOperator
from cryosip.structures.base import AbstractConformationModel

__all__ = ["CryoEMOperator"]


class CryoEMOperator(AbstractRandomOperator):
    """Conformation ``x`` and nuisance ``w`` to a cryo-EM image (``box x box``)."""

    model: AbstractConformationModel
    image_config: ImageConfig
    optics: Optics
    prior: NuisancePrior
    noise_std: float | Float[Array, ""]
    window_pixels: int | None = eqx.field(static=True)
    footprint_pixels: int | None = eqx.field(static=True)

    def __init__(  # noqa: PLR0913 - the operator's physical parts plus two window options
        self,
        model: AbstractConformationModel,
        image_config: ImageConfig,
        optics: Optics,
        prior: NuisancePrior,
        noise_std: float | Float[Array, ""],
        window_pixels: int | None | Literal["auto"] = "auto",
        window_margin: float = 1.15,
        footprint_pixels: int | None = None,
    ):
        self.model, self.image_config, self.optics = model, image_config, optics
        self.prior, self.noise_std = prior, noise_std
        if window_pixels == "auto":
            window_pixels = _auto_window(model, image_config, window_margin)
        self.window_pixels = window_pixels
        self.footprint_pixels = footprint_pixels

    @property
    def image_model(self) -> ImageModel:
        projector = GaussianProjector(
            window_pixels=self.window_pixels, footprint_pixels=self.footprint_pixels
        )
        return ImageModel(self.image_config, self.optics, projector)

    def sample_nuisance(self, key: PRNGKeyArray, n_draws: int) -> ImageNuisance:
        return self.prior.sample(key, n_draws)

    def clean(self, x: Float[Array, " dim"], nuisance: ImageNuisance) -> Float[Array, "box box"]:
        return self.image_model.render(self.model.structure_at(x), nuisance)

    def clean_grid(
        self, xs: Float[Array, "n_particles dim"], nuisance: ImageNuisance
    ) -> Float[Array, "n_particles n_draws box box"]:
        """Atoms built once per ``x``, then all ``n_draws`` nuisances rendered from them."""
        atoms = jax.vmap(self.model.structure_at)(xs)
        n_x, n_w = xs.shape[0], nuisance.euler_deg.shape[0]
        x_index = jnp.repeat(jnp.arange(n_x), n_w)
        w_index = jnp.tile(jnp.arange(n_w), n_x)
        images = self.image_model.render_indexed(atoms, x_index, nuisance, w_index)
        return images.reshape(n_x, n_w, *images.shape[1:])

    def clean_paired(
        self, xs: Float[Array, "n_draws dim"], nuisance: ImageNuisance
    ) -> Float[Array, "n_draws box box"]:
        """Particle ``b`` with nuisance ``b``."""
        atoms = jax.vmap(self.model.structure_at)(xs)
        index = jnp.arange(xs.shape[0])
        return self.image_model.render_indexed(atoms, index, nuisance, index)


def _auto_window(model: AbstractConformationModel, config: ImageConfig, margin: float) -> int:
    """Largest safe window over the box corners and centre of ``X``, times ``margin``."""
    lo, hi = np.asarray(model.lower, float), np.asarray(model.upper, float)
    corners = itertools.product(*zip(lo, hi, strict=True)) if lo.size <= 6 else (lo, hi)
    points = [np.array(c) for c in corners] + [0.5 * (lo + hi)]
    sizes = [window_pixels_for(model.structure_at(jax.numpy.asarray(x)), config) for x in points]
    return int(min(config.box_size, np.ceil(max(sizes) * margin)))
