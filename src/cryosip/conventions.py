r"""Every convention of the cryo-EM forward model, in one place (see ``docs/conventions.md``).

Units: lengths in Å, angles in degrees at the interface (radians inside), voltage in kV,
spherical aberration in mm, spatial frequency in 1/Å.

* **Rotation.** RELION ZYZ ``(rot, tilt, psi)``; the matrix ``A`` (:mod:`cryosip.rotations`)
  rotates the model into the image frame, ``r_image = A @ r_model``; the image is the
  projection along ``z`` of the rotated model.
* **Image grid.** Images are arrays ``img[y, x]`` (row = y). Pixel ``i`` along an axis sits
  at ``(i - box // 2) * pixel_size_angstrom``: the centre is pixel ``box // 2`` for even and
  odd boxes (RELION, cryojax, SPIDER/XMIPP). Volumes are ``vol[z, y, x]`` (MRC order).
* **Shift.** RELION 3.1 ``rlnOriginX/YAngst`` = ``shift_angstrom`` ``o``: it shifts the
  observation into the reference projection, so the model origin appears at
  ``image_centre - o``: ``img(r) = proj(r + o)``.
* **FFT.** Forward ``F(k) = sum_r f(r) exp(-2 pi i k.r)`` unnormalised (numpy ``rfft2``),
  inverse with ``1/box^2``; ``k = fftfreq(box, pixel_size_angstrom)``.
* **CTF** (RELION ``CTF::getCTF``, CTFFIND defocus convention, underfocus positive):

  .. math::
     \Delta z(\alpha) = \tfrac12(d_U + d_V) + \tfrac12(d_U - d_V)\cos 2(\alpha - \alpha_{ast}),\\
     \chi(k) = \pi\lambda\Delta z k^2 - \tfrac{\pi}{2} C_s\lambda^3 k^4 + \varphi
               + \arctan\frac{w}{\sqrt{1-w^2}},\qquad
     \mathrm{CTF}(k) = s\,\sin\chi(k)\, e^{-B k^2/4},

  ``alpha = atan2(k_y, k_x)``, ``phi`` = phase shift, ``w`` = amplitude contrast, ``s`` =
  ``contrast_sign``. With ``s = +1`` (default, :data:`RELION_CONTRAST_SIGN`)
  ``CTF(0) = +w``: particles are white, as in RELION-extracted stacks; cryojax, cryoDRGN
  and RECOVAR use ``s = -1`` (dark particles).
* **Wavelength** (relativistic, RELION's constants):
  ``lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` Å with ``V`` in volts.

Converters (only ``io`` and the tests call them): cryojax's ``EulerAnglePose`` takes the
RELION angles negated and its offset is ``-o``; its CTF is ``-1`` times RELION's and its
astigmatism angle is ``90 - rlnDefocusAngle``. cryoDRGN's
pose pickle holds ``rot = A`` (``parse_pose_star``) and ``trans = o / (pixel_size * box)``.
cryoSPARC's ``alignments3D/pose`` is the rotation vector of ``A^T`` and
``alignments3D/shift`` is ``o`` in pixels (:func:`cryosparc_to_relion_pose`).

>>> float(electron_wavelength_angstrom(300.0))  # doctest: +ELLIPSIS
0.01968...
>>> image_centre_index(64), image_centre_index(65)
(32, 32)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.rotations import euler_to_matrix, matrix_to_euler

__all__ = [
    "RELION_CONTRAST_SIGN",
    "CRYOJAX_CONTRAST_SIGN",
    "amplitude_contrast_phase",
    "cryodrgn_to_relion_pose",
    "cryojax_to_relion_euler",
    "cryosparc_to_relion_pose",
    "electron_wavelength_angstrom",
    "image_centre_index",
    "pixel_centres_angstrom",
    "pixel_edges_angstrom",
    "relion_to_cryodrgn_pose",
    "relion_to_cryojax_ctf",
    "relion_to_cryojax_euler",
    "relion_to_cryojax_offset",
    "relion_to_cryosparc_pose",
    "rfft_column_weights",
    "rfft_frequencies",
]

RELION_CONTRAST_SIGN = 1.0
"""``contrast_sign`` giving RELION-like stacks: CTF(0) = +w, white particles (default)."""
CRYOJAX_CONTRAST_SIGN = -1.0
"""``contrast_sign`` matching cryojax / cryoDRGN / RECOVAR simulations (dark particles)."""


def image_centre_index(box_size: int) -> int:
    """Index of the image centre along an axis: ``box // 2`` (even and odd boxes)."""
    return box_size // 2


def pixel_centres_angstrom(box_size: int, pixel_size_angstrom: float) -> Float[Array, " box"]:
    """Positions (Å) of the pixel centres along one axis, 0 at index ``box // 2``."""
    return (jnp.arange(box_size) - image_centre_index(box_size)) * pixel_size_angstrom


def pixel_edges_angstrom(box_size: int, pixel_size_angstrom: float) -> Float[Array, " box+1"]:
    """Positions (Å) of the ``box + 1`` pixel edges along one axis."""
    return (jnp.arange(box_size + 1) - image_centre_index(box_size) - 0.5) * pixel_size_angstrom


def rfft_frequencies(
    box_size: int, pixel_size_angstrom: float = 1.0
) -> tuple[Float[np.ndarray, "box 1"], Float[np.ndarray, "1 half"]]:
    """``(k_y, k_x)`` in 1/Å on the ``rfft2`` grid (``half = box // 2 + 1``), broadcastable.

    numpy float64 (compile-time constants inside ``jit``; cast to the images' dtype where
    they meet). ``pixel_size_angstrom = 1`` gives cycles per pixel.

    >>> ky, kx = rfft_frequencies(4, 2.0)
    >>> ky[:, 0].tolist(), kx[0].tolist()
    ([0.0, 0.125, -0.25, -0.125], [0.0, 0.125, 0.25])
    """
    ky = np.fft.fftfreq(box_size, d=pixel_size_angstrom)[:, None]
    kx = np.fft.rfftfreq(box_size, d=pixel_size_angstrom)[None, :]
    return ky, kx


def rfft_column_weights(box_size: int) -> Float[np.ndarray, " half"]:
    """How many frequencies of the full plane each ``rfft2`` column stands for (``k`` and
    ``-k``): 2, except 1 for ``k_x = 0`` and, for even boxes, the Nyquist column, so sums
    over half a plane equal full-plane sums (Parseval).

    >>> rfft_column_weights(4).tolist(), rfft_column_weights(5).tolist()
    ([1.0, 2.0, 1.0], [1.0, 2.0, 2.0])
    """
    w = np.full(box_size // 2 + 1, 2.0)
    w[0] = 1.0
    if box_size % 2 == 0:
        w[-1] = 1.0
    return w


def electron_wavelength_angstrom(voltage_kv: float | Array) -> Float[Array, ""]:
    """Relativistic electron wavelength (Å) at ``voltage_kv`` (RELION's formula)."""
    volts = 1000.0 * jnp.asarray(voltage_kv)
    return 12.2643247 / jnp.sqrt(volts * (1.0 + volts * 0.978466e-6))


def amplitude_contrast_phase(amplitude_contrast: float | Array) -> Float[Array, ""]:
    """``arctan(w / sqrt(1 - w^2))``: the CTF phase of the amplitude contrast ``w``."""
    w = jnp.asarray(amplitude_contrast)
    return jnp.arctan(w / jnp.sqrt(1.0 - w**2))


# ---------------------------------------------------------------- cryojax


def relion_to_cryojax_euler(euler_deg: Float[np.ndarray, "*batch 3"]) -> np.ndarray:
    """cryojax ``EulerAnglePose(phi_angle, theta_angle, psi_angle)`` = minus RELION angles."""
    return -np.asarray(euler_deg, dtype=float)


def cryojax_to_relion_euler(angles_deg: Float[np.ndarray, "*batch 3"]) -> np.ndarray:
    """Inverse of :func:`relion_to_cryojax_euler`."""
    return -np.asarray(angles_deg, dtype=float)


def relion_to_cryojax_offset(shift_angstrom: Float[np.ndarray, "*batch 2"]) -> np.ndarray:
    """cryojax ``offset_x/y_in_angstroms`` (particle displacement) = ``-rlnOriginX/YAngst``."""
    return -np.asarray(shift_angstrom, dtype=float)


def relion_to_cryojax_ctf(
    defocus_u_angstrom: np.ndarray,
    defocus_v_angstrom: np.ndarray,
    astigmatism_angle_deg: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cryojax ``AstigmaticCTF(defocus_in_angstroms, astigmatism_in_angstroms,
    astigmatism_angle)`` from RELION ``rlnDefocusU/V/Angle``.

    cryojax 0.6 measures the azimuth as ``atan2(k_x, k_y)`` (from the ``k_y`` axis) where
    RELION uses ``atan2(k_y, k_x)``, so its angle is ``90 - rlnDefocusAngle`` (checked in
    ``tests/test_cryojax_agreement.py``). cryojax's CTF is also ``-1`` times RELION's
    (:data:`CRYOJAX_CONTRAST_SIGN`).
    """
    as_array = lambda a: a if isinstance(a, jax.Array) else np.asarray(a, float)  # traceable
    u, v = as_array(defocus_u_angstrom), as_array(defocus_v_angstrom)
    return 0.5 * (u + v), u - v, 90.0 - as_array(astigmatism_angle_deg)


# ---------------------------------------------------------------- cryoDRGN


def relion_to_cryodrgn_pose(
    euler_deg: Float[np.ndarray, "n 3"],
    shift_angstrom: Float[np.ndarray, "n 2"],
    box_size: int,
    pixel_size_angstrom: float,
) -> tuple[Float[np.ndarray, "n 3 3"], Float[np.ndarray, "n 2"]]:
    """cryoDRGN pose pickle ``(rot, trans)`` as written by ``cryodrgn parse_pose_star``.

    ``rot`` is RELION's matrix ``A`` (cryoDRGN ``utils.R_from_relion``); ``trans`` is the
    RELION origin in pixels divided by the box: ``o / (pixel_size_angstrom * box_size)``.
    """
    rot = np.asarray(euler_to_matrix(jnp.asarray(euler_deg, dtype=float)), dtype=float)
    trans = np.asarray(shift_angstrom, dtype=float) / (pixel_size_angstrom * box_size)
    return rot, trans


def cryodrgn_to_relion_pose(
    rot: Float[np.ndarray, "n 3 3"],
    trans: Float[np.ndarray, "n 2"],
    box_size: int,
    pixel_size_angstrom: float,
) -> tuple[Float[np.ndarray, "n 3"], Float[np.ndarray, "n 2"]]:
    """Inverse of :func:`relion_to_cryodrgn_pose`: ``(euler_deg, shift_angstrom)``."""
    euler = np.asarray(matrix_to_euler(jnp.asarray(rot, dtype=float)), dtype=float)
    shift = np.asarray(trans, dtype=float) * (pixel_size_angstrom * box_size)
    return euler, shift


# ---------------------------------------------------------------- cryoSPARC


def _rotvec_to_matrix(rotvec: Float[np.ndarray, "*batch 3"]) -> np.ndarray:
    """Rodrigues: ``exp([v]_x) = I + sin t K + (1 - cos t) K^2``, ``K = [v / t]_x``, ``t = |v|``."""
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    k = v / np.where(theta[..., 0] > 0, theta[..., 0], 1.0)
    zero = np.zeros_like(k[..., 0])
    hat = np.stack([np.stack([zero, -k[..., 2], k[..., 1]], -1),
                    np.stack([k[..., 2], zero, -k[..., 0]], -1),
                    np.stack([-k[..., 1], k[..., 0], zero], -1)], -2)
    return np.eye(3) + np.sin(theta) * hat + (1.0 - np.cos(theta)) * (hat @ hat)


def _matrix_to_rotvec(matrix: Float[np.ndarray, "*batch 3 3"]) -> np.ndarray:
    """Inverse of :func:`_rotvec_to_matrix` (angle in [0, pi]) through the unit quaternion
    ``(w, x, y, z)``, each row by the formula of its largest component (Shepperd 1978)."""
    m = np.asarray(matrix, dtype=np.float64)
    tr = np.trace(m, axis1=-2, axis2=-1)
    skew = [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]]
    s01, s02 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]
    s12 = m[..., 1, 2] + m[..., 2, 1]
    cand = np.stack([tr, 2 * m[..., 0, 0] - tr, 2 * m[..., 1, 1] - tr, 2 * m[..., 2, 2] - tr], -1)
    best = np.argmax(cand, axis=-1)
    d = np.sqrt(1.0 + np.take_along_axis(cand, best[..., None], -1)[..., 0])  # 4 |q_best|^2 = d^2
    rows = {0: (d * d, *skew), 1: (skew[0], d * d, s01, s02),
            2: (skew[1], s01, d * d, s12), 3: (skew[2], s02, s12, d * d)}  # times 2 d
    q = np.zeros(m.shape[:-2] + (4,))
    for k, row in rows.items():
        q = np.where((best == k)[..., None], np.stack(row, -1) / (2.0 * d[..., None]), q)
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
    sin_half = np.linalg.norm(q[..., 1:], axis=-1)
    angle = 2.0 * np.arctan2(sin_half, q[..., 0])
    scale = np.where(sin_half > 0, angle / np.where(sin_half > 0, sin_half, 1.0), 2.0)
    return q[..., 1:] * scale[..., None]


def cryosparc_to_relion_pose(
    rotvec: Float[np.ndarray, "n 3"],
    shift_px: Float[np.ndarray, "n 2"],
    pixel_size_angstrom: float | Float[np.ndarray, " n"],
) -> tuple[Float[np.ndarray, "n 3"], Float[np.ndarray, "n 2"]]:
    """RELION ``(euler_deg, shift_angstrom)`` from cryoSPARC ``alignments3D/pose, shift``.

    cryoSPARC's pose is a rotation vector ``v`` (axis times angle, radians); its matrix
    ``R = exp([v]_x)`` is the transpose of RELION's ``A``, and the shift (pixels of
    ``pixel_size_angstrom``, the alignment's pixel size) is RELION's origin in pixels, same
    sign: ``A = R^T``, ``o = shift_px * pixel_size_angstrom`` (cryoDRGN ``parse_pose_csparc``
    and pyem ``csparc2star``; derivation in docs/conventions.md).

    >>> e, o = cryosparc_to_relion_pose(np.array([[0.0, 0.0, np.pi / 2]]),
    ...                                 np.array([[1.0, -2.0]]), 1.5)
    >>> np.round(e, 6).tolist(), o.tolist()
    ([[0.0, 0.0, 90.0]], [[1.5, -3.0]])
    """
    a = np.swapaxes(_rotvec_to_matrix(rotvec), -1, -2)
    with jax.enable_x64(True):
        euler = np.asarray(matrix_to_euler(jnp.asarray(a, dtype=jnp.float64)), dtype=float)
    pixel = np.asarray(pixel_size_angstrom, dtype=float)
    shift = np.asarray(shift_px, dtype=float) * (pixel[..., None] if pixel.ndim else pixel)
    return euler, shift


def relion_to_cryosparc_pose(
    euler_deg: Float[np.ndarray, "n 3"],
    shift_angstrom: Float[np.ndarray, "n 2"],
    pixel_size_angstrom: float | Float[np.ndarray, " n"],
) -> tuple[Float[np.ndarray, "n 3"], Float[np.ndarray, "n 2"]]:
    """Inverse of :func:`cryosparc_to_relion_pose`: ``(rotvec, shift_px)``."""
    with jax.enable_x64(True):
        a = np.asarray(euler_to_matrix(jnp.asarray(euler_deg, dtype=jnp.float64)), dtype=float)
    pixel = np.asarray(pixel_size_angstrom, dtype=float)
    shift = np.asarray(shift_angstrom, dtype=float) / (pixel[..., None] if pixel.ndim else pixel)
    return _matrix_to_rotvec(np.swapaxes(a, -1, -2)), shift
