"""The built-in example end to end: simulate AdK, reconstruct with known poses, evaluate.

``run_demo(out_dir, size)`` writes ``out_dir/data`` (``cryosip simulate`` of the packaged
``adk_demo.yaml``: AdK path, bimodal truth 60% near closed / 40% near open), ``out_dir/run``
(``cryosip reconstruct``, KL with weighted particles) and ``out_dir/run/evaluation.json``.
``size="full"`` uses the reconstruct defaults; ``size="tiny"`` is the CI version (400 images,
40 steps, 16 particles).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.evaluate import evaluate_run
from cryosip.pipeline.run import run_reconstruction
from cryosip.provenance import atomic_write_text

__all__ = ["DEMO_SIZES", "run_demo"]

# n_images, flow steps, particles (None: reconstruct's defaults)
DEMO_SIZES: dict[str, tuple[int, int | None, int | None]] = {
    "full": (3000, None, None), "tiny": (400, 40, 16)}


def demo_simulate_config(size: Literal["full", "tiny"], seed: int = 0):
    import yaml

    text = resources.files("cryosip.data").joinpath("adk_demo.yaml").read_text()
    raw = yaml.safe_load(text)
    raw["n_images"], raw["seed"] = DEMO_SIZES[size][0], seed
    return parse_simulate_config(raw, source="cryosip/data/adk_demo.yaml")


def run_demo(out_dir: str | Path, size: Literal["full", "tiny"] = "full", seed: int = 0,
             progress: bool = True, argv: list[str] | None = None) -> dict[str, Any]:
    """Simulate, reconstruct and evaluate; returns the evaluation (module docstring)."""
    out_dir = Path(out_dir)
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    simulate_dataset(demo_simulate_config(size, seed), data_dir, progress=progress, argv=argv)
    _, steps, n_particles = DEMO_SIZES[size]
    config = ReconstructConfig.model_validate({
        "data": {"particles": str(data_dir / "particles.star")},
        "model": {"name": "adk-path", "coarse": "residue"}, "objective": {"kind": "kl"},
        "solver": {"n_particles": n_particles, "wfr": True},
        "loop": {"progress": progress, **({"steps": steps} if steps else {})}, "seed": seed,
    })
    run_reconstruction(config, run_dir, argv=argv)
    evaluation = evaluate_run(run_dir, data_dir / "truth.npz")
    atomic_write_text(run_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    return evaluation
