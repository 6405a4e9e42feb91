"""Conformation models: AdK path and domains, hinge, user paths and modes, PDB output."""

from __future__ import annotations

import gemmi
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.errors import InputError
from cryosip.structures import (
    AdkDomains,
    AdkPath,
    HingeModel,
    LinearModeModel,
    PathModel,
    load_model,
    write_pdb,
)
from cryosip.structures.adk import domain_mask, load_adk_frames
from cryosip.structures.interp import rmsd, superpose


@pytest.fixture(scope="module")
def adk():
    return AdkPath()


def positions(model, x):
    return np.asarray(model.structure_at(jnp.asarray(x, dtype=jnp.float32)).positions_angstrom)


def fitted_rmsd(a, b):
    rot, shift = superpose(a, b, np.ones(len(a)))
    return rmsd(a @ rot.T + shift, b)


def test_adk_shape_and_amplitudes(adk):
    atoms = adk.structure_at(jnp.array([0.0]))
    assert atoms.n_atoms == 3341 and adk.n_frames == 98
    frames, z, _, _ = load_adk_frames()
    np.testing.assert_array_equal(np.unique(z), [1, 6, 7, 8, 16])
    np.testing.assert_allclose(float(atoms.amplitudes.sum()), z.sum())


def test_adk_path_passes_through_frames(adk):
    """At x = f/97 the structure is frame f superposed on frame 0 (any frame, both splines)."""
    frames, _, _, _ = load_adk_frames()
    linear = AdkPath(interpolation="linear")
    for f in (0, 13, 50, 97):
        for model in (adk, linear):
            p = positions(model, [f / 97])
            assert fitted_rmsd(frames[f], p) < 1e-3
            np.testing.assert_allclose(p, positions(adk, [f / 97]), atol=2e-3)


def test_adk_rmsd_monotone_to_6_9(adk):
    """RMSD to x = 0 rises 0 -> 6.9 Å; non-decreasing up to 0.05 Å (plateau near open)."""
    p0 = positions(adk, [0.0])
    r = np.array([rmsd(positions(adk, [x]), p0) for x in np.linspace(0, 1, 60)])
    assert r[0] == 0.0
    np.testing.assert_allclose(r[-1], 6.93, atol=0.05)
    assert np.diff(r).min() > -0.05
    assert r[30] > 4.0  # it moves along the way, not only at the end


def test_adk_centred_and_aligned(adk):
    for x in (0.0, 0.4, 1.0):
        atoms = adk.structure_at(jnp.array([x]))
        w = atoms.amplitudes / atoms.amplitudes.sum()
        np.testing.assert_allclose(np.asarray(w @ atoms.positions_angstrom), 0.0, atol=2e-3)
    ca = adk.topology.atom_names == "CA"
    p0, p1 = positions(adk, [0.0])[ca], positions(adk, [1.0])[ca]
    np.testing.assert_allclose(rmsd(p1, p0), fitted_rmsd(p1, p0), rtol=1e-3)


def test_adk_gradient_matches_finite_difference(adk):
    f = lambda x: adk.structure_at(x).positions_angstrom
    x = jnp.array([0.3037])
    _, tangent = jax.jvp(f, (x,), (jnp.ones(1),))
    h = 1e-3
    fd = (f(x + h) - f(x - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(fd), atol=0.05 * float(
        jnp.abs(fd).max()))


def test_cubic_path_has_continuous_derivative(adk):
    """Derivatives just left and right of a frame agree (C^1); the polyline's jump."""
    linear = AdkPath(interpolation="linear")
    f0, eps = 40 / 97, 1e-5

    def jump(model):
        d = lambda s: jax.jvp(lambda x: model.structure_at(x).positions_angstrom,
                              (jnp.array([s]),), (jnp.ones(1),))[1]
        return float(jnp.abs(d(f0 - eps) - d(f0 + eps)).max())

    assert jump(adk) < 0.02 * jump(linear)


def test_adk_residue_beads(adk):
    coarse = AdkPath(coarse="residue")
    atoms = coarse.structure_at(jnp.array([0.6]))
    assert atoms.n_atoms == 214
    np.testing.assert_allclose(float(atoms.amplitudes.sum()), float(adk.amplitudes.sum()))
    # beads at the amplitude-weighted residue centroids, up to the centring (a translation);
    # at x = 0 (the reference frame of both superpositions) no rotation separates them
    full, amp = positions(adk, [0.0]), np.asarray(adk.amplitudes)
    residues = adk.topology.residue_ids
    _, first = np.unique(residues, return_index=True)
    centroids = np.stack([np.average(full[residues == r], axis=0, weights=amp[residues == r])
                          for r in residues[np.sort(first)]])
    offset = positions(coarse, [0.0]) - centroids
    np.testing.assert_allclose(offset, offset.mean(0, keepdims=True) + 0 * offset, atol=1e-3)
    assert float(atoms.widths_angstrom.min()) > 1.5


def test_adk_without_hydrogens():
    model = AdkPath(hydrogens=False)
    _, z, _, _ = load_adk_frames()
    assert model.structure_at(jnp.array([0.5])).n_atoms == int(np.sum(z > 1)) == 1656
    assert float(model.amplitudes.min()) >= 6


def test_adk_domains(adk):
    dom = AdkDomains()
    # on the diagonal it is the path (up to a rigid motion: the fit differs)
    for s in (0.0, 0.5, 1.0):
        assert fitted_rmsd(positions(dom, [s, s]), positions(adk, [s])) < 0.02
    lid, nmp = (domain_mask(dom.topology, d) for d in ("LID", "NMP"))
    a, b = positions(dom, [0.0, 0.0]), positions(dom, [1.0, 0.0])
    np.testing.assert_allclose(b[nmp], a[nmp], atol=1e-4)  # NMP stays closed
    assert rmsd(b[lid], a[lid]) > 3.0  # LID opens
    c = positions(dom, [0.0, 1.0])
    np.testing.assert_allclose(c[lid], a[lid], atol=1e-4)
    assert rmsd(c[nmp], a[nmp]) > 3.0


def test_hinge_closed_form():
    """Distance of the blob centres = 2 L sin(alpha / 2)."""
    model = HingeModel(n_beads=10, arm_length_angstrom=20.0)
    for x in (0.0, 0.5, 1.0):
        p = positions(model, [x])
        d = np.linalg.norm(p[:10].mean(0) - p[10:].mean(0))
        alpha = np.deg2rad(40.0 + x * 120.0)
        np.testing.assert_allclose(d, 40.0 * np.sin(alpha / 2), rtol=1e-5)

    def centre_distance(x):
        p = model.structure_at(x).positions_angstrom
        return jnp.linalg.norm(p[:10].mean(0) - p[10:].mean(0))

    for x in (0.25, 0.75):  # d/dx 2 L sin(alpha / 2) = L cos(alpha / 2) dalpha/dx
        alpha = np.deg2rad(40.0 + x * 120.0)
        g = jax.grad(centre_distance)(jnp.array([x]))
        np.testing.assert_allclose(g[0], 20.0 * np.cos(alpha / 2) * np.deg2rad(120.0),
                                   rtol=1e-4)


def test_linear_modes_recover_direction():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(6, 3))
    v = rng.normal(size=(6, 3))
    v /= np.linalg.norm(v)
    t = rng.normal(0, 2.0, size=30)
    frames = mean + t[:, None, None] * v
    model = LinearModeModel.from_frames(frames, np.ones(6), np.ones(6), n_modes=1, align=False)
    np.testing.assert_allclose(positions(model, [0.0]), frames.mean(0), atol=1e-5)
    step = positions(model, [1.0]) - positions(model, [0.0])
    np.testing.assert_allclose(np.linalg.norm(step), t.std(ddof=1), rtol=1e-4)
    np.testing.assert_allclose(abs(np.sum(step * v)), np.linalg.norm(step), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(model.upper), [3.0])


def _multimodel_pdb(path, n_models=3):
    lines = []
    for m in range(n_models):
        lines.append(f"MODEL     {m + 1:4d}")
        for i, (name, el) in enumerate([("N", "N"), ("CA", "C"), ("C", "C"), ("O", "O")]):
            x, y, z = 1.5 * i, 0.3 * m * i, 0.0
            lines.append(f"ATOM  {i + 1:5d}  {name:<3s} ALA A   1    {x:8.3f}{y:8.3f}{z:8.3f}"
                         f"  1.00 20.00          {el:>2s}")
        lines.append("ENDMDL")
    path.write_text("\n".join(lines + ["END", ""]))


def test_path_and_modes_from_multimodel_pdb(tmp_path):
    pdb = tmp_path / "frames.pdb"
    _multimodel_pdb(pdb)
    model = load_model(str(pdb))
    assert isinstance(model, PathModel) and model.n_frames == 3
    atoms = model.structure_at(jnp.array([0.5]))
    np.testing.assert_allclose(np.asarray(atoms.amplitudes), [7, 6, 6, 8])
    np.testing.assert_allclose(np.asarray(atoms.widths_angstrom),
                               np.sqrt(20.0 / (8 * np.pi**2)), rtol=1e-5)
    modes = load_model({"structure": str(pdb), "n_modes": 1})
    assert isinstance(modes, LinearModeModel) and modes.dim == 1


def test_path_from_trajectory_files():
    from MDAnalysisTests.datafiles import DCD, PSF

    model = load_model({"topology": PSF, "trajectory": DCD, "select": "name CA"})
    assert model.structure_at(jnp.array([0.2])).n_atoms == 214


def test_write_pdb_round_trip(adk, tmp_path):
    write_pdb(adk, jnp.array([0.7]), tmp_path / "adk.pdb")
    st = gemmi.read_structure(str(tmp_path / "adk.pdb"))
    atoms = [a for ch in st[0] for r in ch for a in r]
    assert len(atoms) == 3341
    assert [a.name for a in atoms[:5]] == list(adk.topology.atom_names[:5])
    xyz = np.array([a.pos.tolist() for a in atoms])
    np.testing.assert_allclose(xyz, positions(adk, [0.7]), atol=1e-3)
    assert st[0][0][0].name == "MET"


def test_load_model_builtins_and_errors(tmp_path):
    assert load_model("hinge").dim == 1
    assert load_model({"name": "adk-domains", "coarse": "residue"}).dim == 2
    with pytest.raises(InputError, match="model"):
        load_model("not-a-model")
    with pytest.raises(InputError, match="model.coarse"):
        load_model({"name": "adk-path", "coarse": "atom"})
    with pytest.raises(InputError, match="no such file"):
        load_model({"topology": "missing.psf", "trajectory": "missing.dcd"}, tmp_path)


def test_models_are_jittable(adk):
    for model, x in ((adk, jnp.array([0.5])), (HingeModel(), jnp.array([0.5]))):
        f = jax.jit(lambda m, x: m.structure_at(x).positions_angstrom)
        np.testing.assert_allclose(np.asarray(f(model, x)), positions(model, x), atol=1e-4)
