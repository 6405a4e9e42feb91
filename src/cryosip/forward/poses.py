r"""Unknown pose and shift integrated out on a deterministic grid (known per-image CTF).

.. math:: \log p(y_n | x) = \log \sum_{r, t} q_r\, q_t\, p(y_n | x, R_r, t), \qquad
          \log p(y_n | x, R, t) = \langle Z_{n,t}, P_{x,R} \rangle
          - \tfrac12 \langle \tilde C_n^2, |P_{x,R}|^2 \rangle - \tfrac12 \|\tilde Y_n\|^2
          - \tfrac{box^2}{2} \log(2\pi\sigma^2)

on the whitened band of :mod:`cryosip.forward.fourier` (``C~``, ``Y~``; ``P`` the
band of the projection with no CTF and no shift), with ``Z_{n,t} = C~_n Y~_n
exp(-2 pi i k.t)``: the shift moves the data instead of the template (the model origin
at ``centre - t``, RELION's ``rlnOriginX/YAngst``). Over a minibatch of ``B`` images,
``T`` shifts and the ``M x R`` templates of ``M`` particles and ``R`` rotations, the first
term is ONE product ``(B T, F) x (F, M R)`` and the second ``(B, F/2) x (F/2, M R)``.
Templates are rendered once per rotation and particle (:class:`FourierOperator`'s
projection) and shared by the whole minibatch. The gradient in ``x`` is the autodiff of
the log-sum-exp, i.e. the templates' gradients weighted by the responsibilities.

The shift as a phase is exact for shifts by whole flow pixels and for band-limited
images; for sub-pixel shifts it leaves out the aliases' own phases (the window renderer
shifts the atoms), a small error at the flow's Nyquist.

**The rotation grid.** The *equi-angular cubed 3-sphere*: unit quaternions are the
radial projection of the 4-cube's facets; the four facets ``q_i = +1`` cover SO(3)
(``q ~ -q``); each is cut into ``n^3`` cells equal in the angles ``a_j = arctan u_j``
(the cubed sphere of climate models, one dimension up). The rotation of a cell is its
centre's; its quadrature weight is the cell's volume, the integral of the volume element
``prod sec^2 a_j / (1 + sum tan^2 a_j)^2`` over the cell (3-point Gauss-Legendre per axis;
the cells' sum is ``pi^2``, the volume of ``S^3 / +-1``, to 1e-6), normalised to 1.
It is deterministic, hierarchical (a cell of level ``n`` is exactly 8 cells of level
``2n``, so coarse-to-fine refinement subdivides, as RELION's and
cryoDRGN's healpix grids do) and needs no healpix library. ``R = 4 n^3`` rotations; the
median angle from a rotation to its nearest neighbour (:func:`so3_spacing_deg`) is 36
degrees at ``n = 4`` (256 rotations), 28.5 at 5 (500), 23 at 6 (864), 17 at 8 (2048).

**The shift grid.** Nodes on a square lattice of spacing ``h`` inside the disc of radius
``2 sigma_t``, weights ``∝ exp(-|t|^2 / 2 sigma_t^2)`` normalised to 1 (a Gaussian prior
truncated at 2 sigma).

**Coarse to fine.** Score the level-``n`` grid with the particles' mixture (no gradient),
keep each image's ``top_k`` rotations by posterior mass, evaluate their ``8 top_k``
children of level ``2n`` and sum the children with the kept cells' weights split among
them, plus the other coarse cells at their coarse values: an adaptive quadrature that is
the full level-``2n`` grid when every cell is kept.

>>> g = PoseGrid.build(level=2, shift_std_angstrom=0.0)
>>> g.matrices.shape, round(float(np.exp(g.log_q_rot).sum()), 6), g.shifts_angstrom.shape
((32, 3, 3), 1.0, (1, 2))
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.forward.base import AbstractPose
from cryosip.forward.fourier import FourierOperator
from cryosip.forward.image_model import _chunked_map

__all__ = ["GridSettings", "ImagePosteriors", "PoseGrid", "PoseMarginalKL", "Search", "children",
           "PoseMarginalRows", "grid_log_likelihood", "image_posteriors", "log_marginal",
           "map_poses_given_particle",
           "pose_marginal_block",
           "search", "shift_grid", "so3_grid", "so3_spacing_deg", "so3_volume", "templates"]


# --- grids -------------------------------------------------------------------------------

def _cell_centres(level: int) -> np.ndarray:
    """Cell indices ``(4 n^3, 4)``: ``[facet, c0, c1, c2]`` in id order."""
    n = level
    f, c0, c1, c2 = np.meshgrid(np.arange(4), np.arange(n), np.arange(n), np.arange(n),
                                indexing="ij")
    return np.stack([f, c0, c1, c2], -1).reshape(-1, 4)


def _quaternions(cells: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit quaternions ``(m, 4)`` and unnormalised volumes ``(m,)`` of cells (float64)."""
    step = 0.5 * np.pi / level
    a = -0.25 * np.pi + (cells[:, 1:] + 0.5) * step  # (m, 3) angles
    u = np.tan(a)
    # each cell's volume by 3-point Gauss-Legendre per axis (exact to ~1e-7 relative)
    nodes, gl = np.polynomial.legendre.leggauss(3)
    offsets = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), -1).reshape(-1, 3)
    w3 = np.prod(np.stack(np.meshgrid(gl, gl, gl, indexing="ij"), -1).reshape(-1, 3), -1)
    b = a[:, None] + 0.5 * step * offsets[None]  # (m, 27, 3)
    rho = np.prod(1.0 / np.cos(b) ** 2, -1) / (1.0 + np.sum(np.tan(b) ** 2, -1)) ** 2
    volume = (rho @ w3) / 8.0
    q = np.empty((len(cells), 4))
    for facet in range(4):
        rows = cells[:, 0] == facet
        others = [i for i in range(4) if i != facet]
        q[rows, facet] = 1.0
        q[np.ix_(rows, others)] = u[rows]
    return q / np.linalg.norm(q, axis=1, keepdims=True), volume * step**3


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(m, 3, 3)`` of unit quaternions ``(w, x, y, z)``."""
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def so3_grid(level: int) -> tuple[np.ndarray, np.ndarray]:
    """``(matrices (4 n^3, 3, 3), log_weights (4 n^3,))`` of the level-``n`` grid
    (module docstring), weights summing to 1, cells in id order."""
    q, vol = _quaternions(_cell_centres(level), level)
    return quaternion_to_matrix(q), np.log(vol / vol.sum())


def so3_volume(level: int) -> float:
    """Unnormalised sum of the cell volumes: ``pi^2`` up to the midpoint rule's error."""
    return float(_quaternions(_cell_centres(level), level)[1].sum())


def children(cell_ids: np.ndarray | Array, level: int):
    """Ids at level ``2n`` of the 8 children of each level-``n`` cell (``(..., 8)``)."""
    n = level
    xp = jnp if isinstance(cell_ids, jax.Array) else np
    f, rest = cell_ids // n**3, cell_ids % n**3
    c0, c1, c2 = rest // n**2, (rest // n) % n, rest % n
    bits = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
    m = 2 * n
    ids = (f[..., None] * m**3 + (2 * c0[..., None] + bits[:, 0]) * m**2
           + (2 * c1[..., None] + bits[:, 1]) * m + 2 * c2[..., None] + bits[:, 2])
    return xp.asarray(ids)


def so3_spacing_deg(level: int) -> float:
    """Median angle (degrees) from a grid rotation to its nearest neighbour."""
    q, _ = _quaternions(_cell_centres(level), level)
    dots = np.abs(q @ q.T)
    np.fill_diagonal(dots, 0.0)
    return float(np.degrees(2.0 * np.arccos(np.clip(np.median(dots.max(1)), -1, 1))))


def shift_grid(std_angstrom: float, spacing_angstrom: float) -> tuple[np.ndarray, np.ndarray]:
    """``(shifts (T, 2) Å, log_weights (T,))`` (module docstring); one node at 0 when
    ``std_angstrom`` is 0."""
    if std_angstrom <= 0:
        return np.zeros((1, 2)), np.zeros(1)
    m = int(np.floor(2.0 * std_angstrom / spacing_angstrom + 1e-9))
    j = np.arange(-m, m + 1) * spacing_angstrom
    t = np.stack(np.meshgrid(j, j, indexing="ij"), -1).reshape(-1, 2)
    t = t[np.sum(t**2, -1) <= (2.0 * std_angstrom) ** 2 + 1e-9]
    logw = -0.5 * np.sum(t**2, -1) / std_angstrom**2
    return t, logw - np.logaddexp.reduce(logw)


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """How the pose is integrated out: rotation ``level`` (``n``), ``top_k`` rotations per
    image refined to level ``2n`` (0: no refinement), the shift prior's std and the shift
    grid's spacing (Å; default ``max(1.5 std, pixel / 2)`` with the flow's pixel: 5 nodes,
0 and ``+-1.5 std`` on each axis, at ``std >= pixel / 3``)."""

    level: int = 4
    top_k: int = 0
    shift_std_angstrom: float = 0.0
    shift_spacing_angstrom: float | None = None


class PoseGrid(eqx.Module):
    """A rotation grid of one level and a shift grid (float32 arrays, module docstring)."""

    matrices: Float[Array, "r 3 3"]
    log_q_rot: Float[Array, " r"]
    shifts_angstrom: Float[Array, "t 2"]
    log_q_shift: Float[Array, " t"]
    level: int = eqx.field(static=True)

    @classmethod
    def build(cls, level: int, shift_std_angstrom: float,
              shift_spacing_angstrom: float | None = None, dtype=jnp.float32) -> PoseGrid:
        mats, logq = so3_grid(level)
        spacing = shift_spacing_angstrom or shift_std_angstrom
        t, logt = shift_grid(shift_std_angstrom, spacing)
        f = lambda a: jnp.asarray(a, dtype)
        return cls(f(mats), f(logq), f(t), f(logt), level)


class _GridPose(AbstractPose):
    """A rotation matrix and no shift (the templates' pose)."""

    matrix: Float[Array, "3 3"]

    def rotation_matrix(self):
        return self.matrix

    def in_plane_shift_angstrom(self):
        return jnp.zeros(2, self.matrix.dtype)


# --- likelihood --------------------------------------------------------------------------

def templates(operator: FourierOperator, xs: Float[Array, "m dim"],
              matrices: Float[Array, "r 3 3"]) -> Float[Array, "m r 2 2 k1 k1"]:
    """Band ``P`` (no CTF, no shift) of every particle under every rotation."""
    atoms, env = operator._structures(xs)
    n_atoms = atoms.positions_angstrom.shape[-2]
    size = operator.chunk_size(xs.shape[0], n_atoms)
    out = _chunked_map(lambda a: operator._bands(atoms, env, _GridPose(a)), matrices, size)
    return jnp.swapaxes(out, 0, 1)


def _shift_phases(operator: FourierOperator, shifts: Float[Array, "t 2"]
                  ) -> Float[Array, "t 2 2 k1 k1"]:
    """``exp(-2 pi i k.t)`` on the band layout ``[half, re/im, j_y, j_x]``."""
    band = operator.band
    j = jnp.arange(band.half + 1, dtype=jnp.float32) / (band.box * band.pixel_size_angstrom)
    ky = jnp.stack([j, -j])[:, :, None]  # (2 halves, K+1, 1)
    ang = -2.0 * math.pi * (shifts[:, 0, None, None, None] * j[None, None, None, :]
                            + shifts[:, 1, None, None, None] * ky[None])
    return jnp.stack([jnp.cos(ang), jnp.sin(ang)], axis=2)


def _data_terms(operator, values, nuisance, shifts):
    """``Z (B, T, F)``, ``C~^2 (B, F/2)`` and ``|Y~|^2 (B,)`` of a minibatch."""
    ctf = jax.vmap(operator.whitened_ctf)(nuisance)  # (B, 2, K1, K1)
    cy = ctf[:, :, None] * values  # (B, 2, 2, K1, K1)
    ph = _shift_phases(operator, shifts)  # (T, 2, 2, K1, K1)
    a, b = cy[:, None, :, 0], cy[:, None, :, 1]
    c, s = ph[None, :, :, 0], ph[None, :, :, 1]
    z = jnp.stack([a * c - b * s, a * s + b * c], axis=3)  # (B, T, 2, 2, K1, K1)
    n_b, n_t = z.shape[:2]
    y2 = jnp.sum(values**2, axis=(1, 2, 3, 4))
    return z.reshape(n_b, n_t, -1), (ctf**2).reshape(n_b, -1), y2


def _const(operator) -> Float[Array, ""]:
    return -0.5 * operator.noise_dim * jnp.log(2.0 * jnp.pi * operator.pixel_noise_std**2)


def _table(z, c2, y2, p, const):
    """``log p(y_n | x_i, R_r, t)`` ``(B, M, T, R)`` from data terms and templates ``p``."""
    n_m, n_r = p.shape[:2]
    flat = p.reshape(n_m * n_r, -1)
    cross = jnp.einsum("btf,pf->btp", z, flat)  # the product (B T, F) x (F, M R)
    power = (flat.reshape(n_m * n_r, 2, 2, -1) ** 2).sum(2).reshape(n_m * n_r, -1)
    quad = c2 @ power.T  # (B, M R)
    ll = cross - 0.5 * quad[:, None] - 0.5 * y2[:, None, None] + const
    n_b, n_t = z.shape[:2]
    return jnp.transpose(ll.reshape(n_b, n_t, n_m, n_r), (0, 2, 1, 3))


def grid_log_likelihood(operator: FourierOperator, values, nuisance, xs, grid: PoseGrid
                        ) -> Float[Array, "b m t r"]:
    """``log p(y_n | x_i, R_r, t)`` on the whole grid (module docstring); ``values`` the
    whitened bands ``(B, 2, 2, K+1, K+1)``, ``nuisance`` the images' CTF parameters."""
    z, c2, y2 = _data_terms(operator, values, nuisance, grid.shifts_angstrom)
    return _table(z, c2, y2, templates(operator, xs, grid.matrices), _const(operator))


def _per_image(operator, values, nuisance, xs, shifts, matrices):
    """``(B, M, T, R')`` with rotations ``matrices (B, R', 3, 3)`` of each image's own."""
    z, c2, y2 = _data_terms(operator, values, nuisance, shifts)
    const = _const(operator)
    one = lambda zz, cc, yy, mm: _table(zz[None], cc[None], yy[None],
                                        templates(operator, xs, mm), const)[0]
    return jax.lax.map(lambda a: one(*a), (z, c2, y2, matrices))


class Search(eqx.Module):
    """A coarse-to-fine evaluation: log-likelihoods and log prior weights of every pose
    each image sums over. ``ll (B, M, T, P)``, ``log_q (B, T, P)`` (``-inf`` for coarse
    cells replaced by their children), ``matrices (B, P, 3, 3)``."""

    ll: Float[Array, "b m t p"]
    log_q: Float[Array, "b t p"]
    matrices: Float[Array, "b p 3 3"]
    shifts_angstrom: Float[Array, "t 2"]

    def log_marginal(self) -> Float[Array, "b m"]:
        return jax.nn.logsumexp(self.ll + self.log_q[:, None], axis=(2, 3))


def search(operator: FourierOperator, values, nuisance, xs, log_weights,
           settings: GridSettings) -> Search:
    """The poses each image sums over (module docstring, Coarse to fine)."""
    dtype = values.dtype
    coarse = PoseGrid.build(settings.level, settings.shift_std_angstrom,
                            _spacing(operator, settings), dtype)
    n_b = values.shape[0]
    ll_c = grid_log_likelihood(operator, values, nuisance, xs, coarse)
    log_q_c = coarse.log_q_shift[:, None] + coarse.log_q_rot[None]  # (T, R)
    mats_c = jnp.broadcast_to(coarse.matrices, (n_b, *coarse.matrices.shape))
    if settings.top_k <= 0:
        return Search(ll_c, jnp.broadcast_to(log_q_c, (n_b, *log_q_c.shape)), mats_c,
                      coarse.shifts_angstrom)
    score = jax.lax.stop_gradient(jax.nn.logsumexp(
        ll_c + log_weights[None, :, None, None] + log_q_c[None, None], axis=(1, 2)))
    _, keep = jax.lax.top_k(score, settings.top_k)  # (B, k)
    fine_mats, fine_logq = so3_grid(2 * settings.level)
    kids = children(keep, settings.level).reshape(n_b, -1)  # (B, 8k)
    mats_f = jnp.asarray(fine_mats, dtype)[kids]
    ll_f = _per_image(operator, values, nuisance, xs, coarse.shifts_angstrom, mats_f)
    log_q_f = coarse.log_q_shift[None, :, None] + jnp.asarray(fine_logq, dtype)[kids][
        :, None]
    dropped = jnp.zeros((n_b, log_q_c.shape[1]), bool).at[jnp.arange(n_b)[:, None], keep].set(
        True)
    log_q_rest = jnp.where(dropped[:, None], -jnp.inf, log_q_c[None])
    return Search(jnp.concatenate([ll_c, ll_f], -1), jnp.concatenate([log_q_rest, log_q_f], -1),
                  jnp.concatenate([mats_c, mats_f], 1), coarse.shifts_angstrom)


def _spacing(operator, settings: GridSettings) -> float:
    if settings.shift_spacing_angstrom:
        return settings.shift_spacing_angstrom
    return max(1.5 * settings.shift_std_angstrom, 0.5 * operator.band.pixel_size_angstrom)


def log_marginal(operator: FourierOperator, values, nuisance, xs, log_weights,
                 settings: GridSettings) -> Float[Array, "b m"]:
    """``log p(y_n | x_i)`` with pose and shift integrated out (module docstring)."""
    return search(operator, values, nuisance, xs, log_weights, settings).log_marginal()


# --- per-image results -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImagePosteriors:
    """Per image: the posterior over the flow's particles with the pose integrated out
    ``(n, M)``; the maximum-a-posteriori rotation ``A`` (``(n, 3, 3)``, cryosip's
    convention: atom ``r`` at ``(A r)_xy - o``) and shift ``o`` (``(n, 2)`` Å, RELION's
    ``rlnOriginX/YAngst``) of the particles' mixture."""

    particle_probs: np.ndarray
    rotations: np.ndarray
    shifts_angstrom: np.ndarray


def image_posteriors(operator: FourierOperator, positions, weights, observations,  # noqa: PLR0913
                     block: int = 64, **grid_settings) -> ImagePosteriors:
    """Per-image posteriors (:class:`ImagePosteriors`) of the measure ``sum_i w_i
    delta_{x_i}``; ``observations`` an :class:`~cryosip.operators.Observations` or a
    source with ``len`` and ``take(rows)`` whose nuisances carry the images' CTFs, read in
    blocks of ``block`` images. ``grid_settings``: the fields of :class:`GridSettings`."""
    settings = GridSettings(**grid_settings)
    xs = jnp.asarray(positions, jnp.float32)
    log_w = jnp.log(jnp.asarray(weights, jnp.float32))
    grid = PoseGrid.build(settings.level, settings.shift_std_angstrom,
                          _spacing(operator, settings))
    floats = 2 * math.prod(operator.band.shape)
    if settings.top_k <= 0 and 4 * floats * xs.shape[0] * grid.matrices.shape[0] <= \
            2 * TEMPLATE_BYTES:  # the whole grid: render the templates once for all blocks
        p = eqx.filter_jit(templates)(operator, xs, grid.matrices)
        run = eqx.filter_jit(lambda op, v, w: _posteriors_of(
            _whole_grid(op, v, w, p, grid), log_w))
    else:
        run = eqx.filter_jit(lambda op, v, w: _posteriors_of(
            search(op, v, w, xs, log_w, settings), log_w))
    parts = []
    for start in range(0, len(observations), block):
        batch = observations.take(np.arange(start, min(start + block, len(observations))))
        parts.append([np.asarray(a) for a in run(operator, batch.values, batch.nuisance)])
    probs, rots, shifts = (np.concatenate(p) for p in zip(*parts, strict=True))
    return ImagePosteriors(probs, rots, shifts)


def map_poses_given_particle(operator: FourierOperator, positions, particle, observations,
                             settings: GridSettings, block: int = 64
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Each image's maximum-a-posteriori rotation ``(n, 3, 3)`` and shift ``(n, 2)`` Å on the
    whole grid of ``settings`` (``top_k`` not used), given its own particle ``particle[n]``
    (an index into ``positions``, e.g. the most probable one): ``argmax_{r,t} log q_r +
    log q_t + log p(y_n | x_{particle[n]}, R_r, t)``.

    One particle's templates per image, not all ``M``: the images are grouped by their
    particle, each particle's ``R`` templates are rendered once (in chunks of particles within
    :data:`TEMPLATE_BYTES`, as :class:`PoseMarginalRows`), and a padded block of ``block``
    images of one particle is one ``(block T, F) x (F, R)`` product: ``1 / M`` of the cost
    of the mixture's MAP over every particle (:func:`image_posteriors`), so it can run on the
    fine grid of the full-data phase. ``observations``: a source with ``len`` and
    ``take(rows)`` (rows in any order) whose nuisances carry the images' CTFs."""
    grid = PoseGrid.build(settings.level, settings.shift_std_angstrom,
                          _spacing(operator, settings))
    xs = np.asarray(positions, np.float32)
    particle = np.asarray(particle, np.int64)
    n = len(observations)
    if particle.shape != (n,) or (n and (particle.min() < 0 or particle.max() >= len(xs))):
        raise ValueError(f"particle must hold {n} indices into {len(xs)} particles")
    order = np.argsort(particle, kind="stable")
    bounds = np.searchsorted(particle[order], np.arange(len(xs) + 1))
    size = _particle_chunk(operator, grid, len(xs), block)
    render = eqx.filter_jit(templates)
    best = eqx.filter_jit(_best_pose)
    rot_index = np.zeros(n, np.int64)
    shift_index = np.zeros(n, np.int64)
    for c in range(0, len(xs), size):
        if bounds[c] == bounds[min(c + size, len(xs))]:
            continue  # no image has a particle of this chunk
        p = render(operator, jnp.asarray(xs[c:c + size]), grid.matrices)
        for j in range(c, min(c + size, len(xs))):
            rows = order[bounds[j]:bounds[j + 1]]
            for s in range(0, len(rows), block):
                part = rows[s:s + block]
                # padded with copies of the last row on the host: one shape, one compilation
                batch = observations.take(np.concatenate(
                    [part, np.repeat(part[-1:], block - len(part))]))
                t, r = best(operator, batch.values, batch.nuisance, p[j - c], grid)
                shift_index[part] = np.asarray(t)[:len(part)]
                rot_index[part] = np.asarray(r)[:len(part)]
    return (np.asarray(grid.matrices)[rot_index],
            np.asarray(grid.shifts_angstrom)[shift_index])


def _best_pose(operator, values, nuisance, p1, grid: PoseGrid):
    """``(t, r)`` maximising the posterior of each image against one particle's
    templates ``p1 (R, ...)``."""
    z, c2, y2 = _data_terms(operator, values, nuisance, grid.shifts_angstrom)
    ll = _table(z, c2, y2, p1[None], _const(operator))[:, 0]  # (B, T, R)
    score = ll + grid.log_q_shift[:, None] + grid.log_q_rot[None]
    flat = jnp.argmax(score.reshape(score.shape[0], -1), axis=1)
    n_r = score.shape[-1]
    return flat // n_r, flat % n_r


def _whole_grid(operator, values, nuisance, p, grid: PoseGrid) -> Search:
    """:func:`search` without refinement, from the templates ``p`` of the whole grid."""
    z, c2, y2 = _data_terms(operator, values, nuisance, grid.shifts_angstrom)
    n_b = values.shape[0]
    log_q = grid.log_q_shift[:, None] + grid.log_q_rot[None]
    return Search(_table(z, c2, y2, p, _const(operator)),
                  jnp.broadcast_to(log_q, (n_b, *log_q.shape)),
                  jnp.broadcast_to(grid.matrices, (n_b, *grid.matrices.shape)),
                  grid.shifts_angstrom)


def _posteriors_of(s: Search, log_w):
    joint = s.ll + s.log_q[:, None] + log_w[None, :, None, None]  # (B, M, T, P)
    per_particle = jax.nn.logsumexp(joint, axis=(2, 3))
    probs = jax.nn.softmax(per_particle, axis=1)
    pose = jax.nn.logsumexp(joint, axis=1).reshape(s.ll.shape[0], -1)  # (B, T P)
    best = jnp.argmax(pose, axis=1)
    n_p = s.ll.shape[-1]
    t, p = best // n_p, best % n_p
    rot = jnp.take_along_axis(s.matrices, p[:, None, None, None], 1)[:, 0]
    return probs, rot, s.shifts_angstrom[t]


# --- the flow's objective ----------------------------------------------------------------

class PoseMarginalKL(eqx.Module):
    """KL with the pose and shift integrated out: ``-mean_n log sum_i w_i p(y_n | x_i)``
    with :func:`log_marginal` (the images' own CTFs from ``batch.nuisance``; its angles
    and shifts, if any, are not used). The same call as
    :class:`~cryosip.flows.KLObjective`, so the flow drives it unchanged.

    Poses are searched afresh every step, not cached per image: the templates are shared
    by the whole minibatch (``M R`` renders a step whatever ``B`` is), while a per-image
    cache of ``K`` poses needs ``B K M`` renders of each image's own, more than ``M R`` once
    ``B K > R`` (128 images x 8 poses against 500 rotations at level 5)."""

    operator: FourierOperator
    settings: GridSettings = eqx.field(static=True)

    def __call__(self, positions, weights, batch, key) -> Float[Array, ""]:
        log_w = jnp.log(weights)
        ll = log_marginal(self.operator, batch.values, batch.nuisance, positions,
                          jax.lax.stop_gradient(log_w), self.settings)
        return -jnp.mean(jax.nn.logsumexp(ll + log_w[None, :], axis=1))


def pose_marginal_block(operator: FourierOperator, settings: GridSettings):
    """``(batch, xs) -> [b, M]`` log-likelihoods with pose and shift integrated out, the
    block function of the full-data weights phase
    (:func:`cryosip.flows.refine.refine_weights`) for unknown poses: a
    :class:`PoseMarginalRows` on the whole grid of ``settings.level`` (no ``top_k``
    refinement), else :func:`log_marginal` with it."""
    if settings.top_k <= 0:
        return PoseMarginalRows(operator, settings)
    grid = eqx.filter_jit(lambda op, ys, xs, w: log_marginal(
        op, ys, w, xs, jnp.zeros(xs.shape[0], ys.dtype), settings))
    return lambda batch, xs: grid(operator, batch.values, jnp.asarray(xs), batch.nuisance)


TEMPLATE_BYTES = 96 << 20
"""Budget of one particle chunk of :class:`PoseMarginalRows`: its templates, and the
log-likelihood table of a block of 256 images against them."""


class PoseMarginalRows:
    """``log p(y_n | x_j)`` on the full grid of one level, for many blocks of images
    against the same particles: ``(batch, xs) -> [b, m]``.

    The templates of ``xs`` (``m R`` renders) are kept between calls with the same ``xs``,
    so a pass over N images renders each particle's templates once, not once per block.
    :func:`cryosip.flows.refine.likelihood_rows` passes the particles in chunks of
    :meth:`particle_chunk` (all images for one chunk, then the next), which bounds the
    templates' memory whatever the level and the number of particles. The values are
    :func:`log_marginal`'s with ``top_k = 0``.
    """

    def __init__(self, operator: FourierOperator, settings: GridSettings):
        self.operator = operator
        self.grid = PoseGrid.build(settings.level, settings.shift_std_angstrom,
                                   _spacing(operator, settings))
        self._key: bytes | None = None
        self._templates = None
        self._render = eqx.filter_jit(templates)
        self._score = eqx.filter_jit(_marginal_from_templates)

    def particle_chunk(self, n_particles: int, block: int = 256) -> int:
        """Particles per chunk: templates and a block's table within :data:`TEMPLATE_BYTES`,
        the particles cut into chunks as equal as the count allows (64: 8 of 8, not 7 of 9
        and 1)."""
        return _particle_chunk(self.operator, self.grid, n_particles, block)

    def __call__(self, batch, xs) -> Float[Array, "b m"]:
        xs = np.asarray(xs, np.float32)
        if xs.tobytes() != self._key:
            self._templates = self._render(self.operator, jnp.asarray(xs), self.grid.matrices)
            self._key = xs.tobytes()
        return self._score(self.operator, batch.values, batch.nuisance, self._templates,
                           self.grid)


def _particle_chunk(operator, grid: PoseGrid, n_particles: int, block: int) -> int:
    """:meth:`PoseMarginalRows.particle_chunk`."""
    n_rot, n_shift = grid.matrices.shape[0], grid.shifts_angstrom.shape[0]
    floats = 2 * math.prod(operator.band.shape)  # a template: [half, re/im, j_y, j_x]
    per = 4 * n_rot * max(floats, block * n_shift)
    most = max(1, min(n_particles, TEMPLATE_BYTES // per))
    return -(-n_particles // -(-n_particles // most))  # equal chunks: one compilation


def _marginal_from_templates(operator, values, nuisance, p, grid: PoseGrid):
    z, c2, y2 = _data_terms(operator, values, nuisance, grid.shifts_angstrom)
    ll = _table(z, c2, y2, p, _const(operator))  # (B, m, T, R)
    log_q = grid.log_q_shift[:, None] + grid.log_q_rot[None]
    return jax.nn.logsumexp(ll + log_q[None, None], axis=(2, 3))
