"""Outputs a structural biologist opens: all-atom PDBs, maps on them, ``chimerax.cxc``.

Independent checks: the PDBs are read back with gemmi (not cryosip's reader), the map
header's origin and the voxel data are read from the raw MRC2014 bytes with numpy (not
``mrcfile``), atomic numbers and masses come from gemmi's element table, and the map's
enclosed volume is compared with the protein volume per dalton (1.21 Å³/Da).
"""

from __future__ import annotations

import re
from pathlib import Path

import gemmi
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.forward import ImageConfig
from cryosip.pipeline.outputs import contour_level, write_structures
from cryosip.structures.factory import load_model, load_output_model

BEADS = {"name": "adk-path", "coarse": "residue"}
QUANTILES = (0.1, 0.5, 0.9)
BOX, PIXEL = 32, 4.0


def read_mrc_raw(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """``(volume[z, y, x], origin (x, y, z) Å, voxel Å)`` from MRC2014 bytes (mode 2 only)."""
    raw = Path(path).read_bytes()
    nx, ny, nz, mode = np.frombuffer(raw[:16], "<i4")
    assert mode == 2
    cella = np.frombuffer(raw[40:52], "<f4")
    origin = np.frombuffer(raw[196:208], "<f4").astype(float)
    nsymbt = int(np.frombuffer(raw[92:96], "<i4")[0])
    data = np.frombuffer(raw[1024 + nsymbt:], "<f4").reshape(nz, ny, nx)
    return data.astype(float), origin, float(cella[0] / nx)


def pdb_atoms(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """``(atom names, positions [n, 3], atomic numbers, (chain, residue number))`` via gemmi."""
    structure = gemmi.read_structure(str(path))
    atoms = [(ch.name, r.seqid.num, a) for ch in structure[0] for r in ch for a in r]
    names = [a.name for *_, a in atoms]
    positions = np.array([a.pos.tolist() for *_, a in atoms])
    z = np.array([a.element.atomic_number for *_, a in atoms], float)
    return names, positions, z, [(c, n) for c, n, _ in atoms]


@pytest.fixture(scope="module")
def bead_run(tmp_path_factory):
    """``write_structures`` as a run on AdK residue beads calls it: the all-atom output model."""
    out = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(3)
    positions = rng.beta(2.0, 5.0, size=(40, 1))
    weights = rng.uniform(0.5, 1.5, size=40)
    weights /= weights.sum()
    output_model = load_output_model(BEADS)
    records = write_structures(out, output_model, positions, weights, QUANTILES,
                               ImageConfig(BOX, PIXEL))
    return out, records, output_model, load_model(BEADS)


def test_output_model_is_all_atom():
    beads, full = load_model(BEADS), load_output_model(BEADS)
    assert full.structure_at(jnp.zeros(1)).n_atoms == 3341
    assert beads.structure_at(jnp.zeros(1)).n_atoms == 214
    assert full.dim == beads.dim
    no_h = load_output_model({**BEADS, "hydrogens": False})
    assert no_h.topology.n_atoms == int(np.sum(full.topology.elements != "H"))
    assert load_output_model("hinge").structure_at(jnp.zeros(1)).n_atoms == 48


def test_pdbs_have_every_atom_with_its_name(bead_run):
    out, records, output_model, _ = bead_run
    assert [r["name"] for r in records] == ["x_0_q0.1", "x_0_q0.5", "x_0_q0.9"]
    for rec in records:
        names, positions, _, residues = pdb_atoms(out / rec["pdb"])
        assert len(names) == 3341
        assert len(set(residues)) == 214
        assert {"N", "CA", "C", "O", "CB", "HA"} <= set(names)
        np.testing.assert_array_equal(names, output_model.topology.atom_names)
        expected = np.asarray(output_model.structure_at(jnp.asarray(rec["x"], jnp.float32))
                              .positions_angstrom, float)
        np.testing.assert_allclose(positions, expected, rtol=0, atol=6e-4)  # PDB: 3 decimals


def test_all_atom_pdbs_sit_on_the_fitted_beads(bead_run):
    """Residue centroids of the written atoms (gemmi's atomic numbers) are the fitted beads."""
    out, records, _, beads = bead_run
    for rec in records:
        _, positions, z, residues = pdb_atoms(out / rec["pdb"])
        keys = list(dict.fromkeys(residues))
        index = np.array([keys.index(r) for r in residues])
        centroids = np.stack([np.average(positions[index == k], axis=0, weights=z[index == k])
                              for k in range(len(keys))])
        bead_xyz = np.asarray(beads.structure_at(jnp.asarray(rec["x"], jnp.float32))
                              .positions_angstrom, float)
        distance = np.linalg.norm(centroids - bead_xyz, axis=1)
        assert distance.max() < 0.2, distance.max()  # measured 0.15 Å at the open end


def test_maps_overlay_their_structures(bead_run):
    """The density centroid, placed by the header origin, is the atoms' weighted centroid."""
    out, records, _, _ = bead_run
    for rec in records:
        volume, origin, voxel = read_mrc_raw(out / rec["map"])
        assert volume.shape == (BOX, BOX, BOX)
        np.testing.assert_allclose(voxel, PIXEL, rtol=1e-6)
        np.testing.assert_allclose(origin, -(BOX // 2) * PIXEL, rtol=0, atol=1e-6)
        zi, yi, xi = np.indices(volume.shape)
        mass = volume.sum()
        centre = [origin[0] + voxel * np.sum(volume * xi) / mass,
                  origin[1] + voxel * np.sum(volume * yi) / mass,
                  origin[2] + voxel * np.sum(volume * zi) / mass]
        _, positions, z, _ = pdb_atoms(out / rec["pdb"])
        np.testing.assert_allclose(centre, np.average(positions, axis=0, weights=z),
                                   rtol=0, atol=0.05)


def test_contour_encloses_the_protein_volume(bead_run):
    """At the level, the map encloses about 1.21 Å³/Da x the mass of the atoms written."""
    out, records, _, _ = bead_run
    structure = gemmi.read_structure(str(out / records[1]["pdb"]))
    dalton = sum(a.element.weight for ch in structure[0] for r in ch for a in r)
    np.testing.assert_allclose(dalton, 23.6e3, rtol=0.02)
    volume, _, voxel = read_mrc_raw(out / records[1]["map"])
    enclosed = np.sum(volume > records[1]["level"]) * voxel**3
    # contour_level's documented range for the all-atom AdK map: 0.8 of the density encloses
    # 25-28 x 10^3 A^3 of the 28.6 x 10^3 that 1.21 A^3/Da gives (the map is blurred by the
    # voxel and the atoms' widths, so a little less than the protein's volume is enclosed)
    assert 25e3 / 28.6e3 * 1.21 * dalton <= enclosed <= 1.21 * dalton, enclosed / dalton


def test_contour_level_closed_form():
    """A uniform cube of 1s in zeros: any fraction < 1 gives level 1; a ramp by hand."""
    cube = np.zeros((8, 8, 8))
    cube[2:6, 2:6, 2:6] = 1.0
    np.testing.assert_allclose(contour_level(cube, 0.8), 1.0, rtol=0)
    ramp = np.arange(1.0, 11.0)  # from the top 10, 19, 27, 34, 40, 45 of 55: >= 44 first at 5
    np.testing.assert_allclose(contour_level(ramp, 0.8), 5.0, rtol=0)


_ALLOWED = {"close", "open", "volume", "transparency", "color", "cartoon", "hide", "show",
            "style", "set", "lighting", "graphics", "view"}


def parse_cxc(path: Path) -> list[list[str]]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln.split() for ln in lines if ln and not ln.startswith("# ")]


def test_chimerax_script_names_files_that_exist(bead_run):
    out, records, _, _ = bead_run
    commands = parse_cxc(out / "chimerax.cxc")
    assert {c[0] for c in commands} <= _ALLOWED
    opened = [c[1] for c in commands if c[0] == "open"]
    assert opened == [r["map"] for r in records] + [r["pdb"] for r in records]
    for name in opened:
        assert not Path(name).is_absolute() and (out / name).is_file(), name
    model_file = {k: name for k, name in enumerate(opened, start=1)}
    levels = {}
    for c in commands:
        if c[0] == "volume":
            k = int(c[1].removeprefix("#"))
            assert model_file[k].endswith(".mrc")
            assert c[c.index("style") + 1] == "surface"
            levels[k] = float(c[c.index("level") + 1])
        if c[0] in {"cartoon", "color"}:
            assert model_file[int(c[1].removeprefix("#"))].endswith(".pdb")
    assert sorted(levels) == list(range(1, len(records) + 1))
    for k, level in levels.items():
        volume, _, _ = read_mrc_raw(out / model_file[k])
        assert volume.min() < level < volume.max(), (model_file[k], level)
    colours = [c[c.index("color") + 1] for c in commands if c[0] == "volume"]
    assert len(set(colours)) == len(records)


def test_chimerax_script_for_bead_models(tmp_path):
    """The hinge's beads (HETATM, no protein) get the same script; levels from their maps."""
    model = load_output_model("hinge")
    positions = np.linspace(0.2, 0.8, 10)[:, None]
    records = write_structures(tmp_path, model, positions, np.full(10, 0.1), (0.25, 0.75),
                               ImageConfig(24, 3.0))
    commands = parse_cxc(tmp_path / "chimerax.cxc")
    for rec in records:
        volume, _, _ = read_mrc_raw(tmp_path / rec["map"])
        level = [float(c[c.index("level") + 1]) for c in commands
                 if c[0] == "volume" and c[1] == f"#{records.index(rec) + 1}"]
        assert len(level) == 1 and volume.min() < level[0] < volume.max()
    assert re.search(r"^style #3 & ~protein stick$", (tmp_path / "chimerax.cxc").read_text(),
                     re.MULTILINE)


def test_registered_output_model(tmp_path, bead_run):
    """The caller's wrapping (registration's rigid offset) reaches the PDB, names intact."""
    from cryosip.structures.translated import TranslatedModel

    _, _, output_model, _ = bead_run
    offset = np.array([6.0, -4.5, 2.0])
    moved = TranslatedModel(output_model, offset)
    (record,) = write_structures(tmp_path, moved, np.full((5, 1), 0.4), np.full(5, 0.2),
                                 (0.5,), ImageConfig(BOX, PIXEL))
    names, positions, z, _ = pdb_atoms(tmp_path / record["pdb"])
    np.testing.assert_array_equal(names, output_model.topology.atom_names)
    base = np.asarray(output_model.structure_at(jnp.array([0.4], jnp.float32))
                      .positions_angstrom, float)
    np.testing.assert_allclose(positions, base + offset, rtol=0, atol=6e-4)
    volume, origin, voxel = read_mrc_raw(tmp_path / record["map"])
    zi, yi, xi = np.indices(volume.shape)
    centre = origin + voxel * np.array([np.sum(volume * i) for i in (xi, yi, zi)]) / volume.sum()
    np.testing.assert_allclose(centre, np.average(positions, axis=0, weights=z), rtol=0, atol=0.05)
