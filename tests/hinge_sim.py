"""An independent simulator for the user-frame tests: numpy + scipy only, no cryosip code.

A two-domain hinge (two rigid blobs of pseudo-atoms; the hinge angle ``alpha`` in [0, 60]
deg turns domain B about ``e_z`` through the hinge point) in a frame whose origin is the
centroid of domain A (so no frame is centred on its own centroid). Images: pixel-averaged
Gaussian projection (erf), RELION's CTF (``CTF::getCTF``, white particles), white noise at
``SNR = mean_n Var_box(clean_n) / sigma^2``; known poses and shifts written to a RELION 3.1
STAR (``data_optics`` + ``data_particles``, ``NNNNNN@stack.mrcs``) beside an MRC stack, the
way RELION lays them out. The multi-model PDB holds the hinge at 0, 1, ..., 60 deg.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
from scipy.special import erf

BOX, PIXEL, VOLTAGE, CS, AMP = 64, 3.0, 300.0, 2.7, 0.1
WIDTH = 2.0  # Gaussian std of each pseudo-atom, Å
N_PER_DOMAIN = 281  # 562 pseudo-atoms in all


def relion_euler_matrix(rot, tilt, psi):
    """RELION's ``Euler_angles2matrix`` (degrees), batched: ``r_image = A r_model``."""
    a, b, g = (np.deg2rad(np.asarray(v, float)) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([
        np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        np.stack([sc, ss, cb], -1)], -2)


def hinge_domains(seed: int = 1):
    """``(domain_a, domain_b_at_0, hinge_point)`` in the map's frame (Å)."""
    rng = np.random.default_rng(seed)
    blob = rng.normal(0.0, 5.0, (2, N_PER_DOMAIN, 3))
    blob -= blob.mean(axis=1, keepdims=True)
    hinge = np.array([-16.0, 3.0, 2.0])        # domain A's centroid is the origin
    dom_a = blob[0]
    dom_b = blob[1] + hinge + 22.0 * np.array([np.cos(np.pi / 3), np.sin(np.pi / 3), 0.0])
    return dom_a, dom_b, hinge


def hinge_structure(alpha_deg, seed: int = 1) -> np.ndarray:
    """``[562, 3]`` coordinates (Å) at hinge angle ``alpha_deg``."""
    dom_a, dom_b, hinge = hinge_domains(seed)
    t = np.deg2rad(alpha_deg)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    return np.concatenate([dom_a, (dom_b - hinge) @ rz.T + hinge])


def write_multimodel_pdb(path: Path, frames: np.ndarray) -> None:
    """PDB with one MODEL per frame, pseudo-atoms as carbon (B-factor from WIDTH)."""
    bfac = 8 * np.pi**2 * WIDTH**2
    lines = []
    for m, frame in enumerate(frames):
        lines.append(f"MODEL     {m + 1:4d}")
        for i, (x, y, z) in enumerate(frame):
            chain, res = ("A", 1 + i // 10) if i < N_PER_DOMAIN else ("B", 1 + i // 10)
            lines.append(f"ATOM  {i + 1:5d}  CA  GLY {chain}{res:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                         f"  1.00{bfac:6.2f}           C")
        lines.append("ENDMDL")
    Path(path).write_text("\n".join([*lines, "END", ""]))


def true_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Bimodal truth: 0.5 N(15, 5^2) + 0.5 N(45, 5^2) deg, redrawn outside [0, 60]."""
    out = np.where(rng.random(n) < 0.5, 15.0, 45.0) + 5.0 * rng.normal(size=n)
    bad = (out < 0) | (out > 60)
    while bad.any():
        out[bad] = np.where(rng.random(bad.sum()) < 0.5, 15.0, 45.0) + 5.0 * rng.normal(
            size=bad.sum())
        bad = (out < 0) | (out > 60)
    return out


def project(coords: np.ndarray, a: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Pixel-averaged Gaussian projection along z of ``A r`` placed at centre - shift."""
    xy = coords @ a[:2].T - shift
    edges = (np.arange(BOX + 1) - BOX // 2 - 0.5) * PIXEL
    cdf = 0.5 * (1 + erf((edges[None, :] - xy[:, :1]) / (np.sqrt(2) * WIDTH)))
    gx = np.diff(cdf, axis=1)                                       # [atoms, x]
    cdf = 0.5 * (1 + erf((edges[None, :] - xy[:, 1:2]) / (np.sqrt(2) * WIDTH)))
    gy = np.diff(cdf, axis=1)                                       # [atoms, y]
    return gy.T @ gx                                                # img[y, x]


def relion_ctf(du, dv, angle_deg) -> np.ndarray:
    """RELION's CTF on the ``rfft2`` grid (``CTF(0) = +AMP``)."""
    volts = VOLTAGE * 1e3
    lam = 12.2643247 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    ky = np.fft.fftfreq(BOX, PIXEL)[:, None]
    kx = np.fft.rfftfreq(BOX, PIXEL)[None, :]
    k2 = kx**2 + ky**2
    alpha = np.arctan2(ky, kx)
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (alpha - np.deg2rad(angle_deg)))
    chi = (np.pi * lam * dz * k2 - 0.5 * np.pi * CS * 1e7 * lam**3 * k2**2
           + np.arctan(AMP / np.sqrt(1 - AMP**2)))
    return np.sin(chi)


def simulate(out_dir: Path, n: int, snr: float = 0.1, seed: int = 0, model_shift=(0, 0, 0)):
    """Write ``frames.pdb`` (moved by ``model_shift`` Å), ``particles.star`` and
    ``particles.mrcs`` to ``out_dir``; return the true angles (deg)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    angles = true_angles(n, rng)
    rot, psi = rng.uniform(-180, 180, (2, n))
    tilt = np.rad2deg(np.arccos(rng.uniform(-1, 1, n)))
    shifts = rng.normal(0.0, 2.0, (n, 2))
    du = rng.uniform(10000, 25000, n)
    dv = du - rng.uniform(0, 500, n)
    dang = rng.uniform(0, 180, n)
    mats = relion_euler_matrix(rot, tilt, psi)
    clean = np.empty((n, BOX, BOX))
    for i in range(n):
        proj = project(hinge_structure(angles[i]), mats[i], shifts[i])
        clean[i] = np.fft.irfft2(np.fft.rfft2(proj) * relion_ctf(du[i], dv[i], dang[i]),
                                 s=(BOX, BOX))
    sigma = np.sqrt(np.mean(clean.var(axis=(1, 2))) / snr)
    images = (clean + sigma * rng.normal(size=clean.shape)).astype(np.float32)
    with mrcfile.new(out_dir / "particles.mrcs", overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = PIXEL
    frames = np.stack([hinge_structure(a) for a in range(61)]) + np.asarray(model_shift)
    write_multimodel_pdb(out_dir / "frames.pdb", frames)
    _write_star(out_dir / "particles.star", rot, tilt, psi, shifts, du, dv, dang)
    return angles


def _write_star(path: Path, rot, tilt, psi, shifts, du, dv, dang) -> None:
    optics = ["", "# version 30001", "", "data_optics", "", "loop_ ",
              "_rlnOpticsGroupName #1 ", "_rlnOpticsGroup #2 ",
              "_rlnMicrographOriginalPixelSize #3 ", "_rlnVoltage #4 ",
              "_rlnSphericalAberration #5 ", "_rlnAmplitudeContrast #6 ",
              "_rlnImagePixelSize #7 ", "_rlnImageSize #8 ", "_rlnImageDimensionality #9 ",
              f"opticsGroup1            1     1.000000   {VOLTAGE:.6f}     {CS:.6f}     "
              f"{AMP:.6f}     {PIXEL:.6f}           {BOX}            2 ", " ", ""]
    cols = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
            "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
            "rlnOpticsGroup"]
    head = ["# version 30001", "", "data_particles", "", "loop_ "]
    head += [f"_{c} #{i + 1} " for i, c in enumerate(cols)]
    rows = [f"{i + 1:06d}@particles.mrcs {rot[i]:12.6f} {tilt[i]:12.6f} {psi[i]:12.6f} "
            f"{shifts[i, 0]:12.6f} {shifts[i, 1]:12.6f} {du[i]:13.6f} {dv[i]:13.6f} "
            f"{dang[i]:12.6f}            1 " for i in range(len(rot))]
    Path(path).write_text("\n".join(optics + head + rows + [" ", ""]))
