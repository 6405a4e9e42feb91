r"""The cryo-EM random forward operator ``y = G(x, w) + sigma * eps``.

``x`` is a conformation (``model.structure_at(x)`` gives the atoms), ``w`` an
:class:`ImageNuisance` drawn from the :class:`NuisancePrior`, ``G`` the clean image of
:mod:`cryosip.forward.image_model`. The batched methods build the atoms once per ``x`` and
render every nuisance from them (the hot path of the flows).

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

import jax
from jaxtyping import Array, Float, PRNGKeyArray

from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics
from cryosip.forward.image_model import ImageModel
from cryosip.forward.pose import ImageNuisance, NuisancePrior
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

    def __init__(
        self,
        model: AbstractConformationModel,
        image_config: ImageConfig,
        optics: Optics,
        prior: NuisancePrior,
        noise_std: float | Float[Array, ""],
    ):
        self.model, self.image_config, self.optics = model, image_config, optics
        self.prior, self.noise_std = prior, noise_std

    @property
    def image_model(self) -> ImageModel:
        return ImageModel(self.image_config, self.optics)

    def sample_nuisance(self, key: PRNGKeyArray, n_draws: int) -> ImageNuisance:
        return self.prior.sample(key, n_draws)

    def clean(self, x: Float[Array, " dim"], nuisance: ImageNuisance) -> Float[Array, "box box"]:
        return self.image_model.render(self.model.structure_at(x), nuisance)

    def clean_grid(
        self, xs: Float[Array, "n_particles dim"], nuisance: ImageNuisance
    ) -> Float[Array, "n_particles n_draws box box"]:
        """Atoms built once per ``x``, then all ``n_draws`` nuisances rendered from them."""
        render = self.image_model.render_batch
        return jax.vmap(lambda x: render(self.model.structure_at(x), nuisance))(xs)

    def clean_paired(
        self, xs: Float[Array, "n_draws dim"], nuisance: ImageNuisance
    ) -> Float[Array, "n_draws box box"]:
        """Particle ``b`` with nuisance ``b``."""
        render = self.image_model.render
        return jax.vmap(lambda x, w: render(self.model.structure_at(x), w))(xs, nuisance)
