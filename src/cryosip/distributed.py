r"""The flow on several processes: data parallel over JAX's multi-process runtime.

JAX's own runtime (:func:`jax.distributed.initialize`: a coordinator at ``HOST:PORT``,
``P`` processes with ids ``0..P-1``; collectives over gloo on CPU, NCCL on GPU) runs the
same program on every process. The flow is data parallel over it:

* every process draws the same minibatch rows from the shared step key
  (:func:`cryosip.flows.run.run_flow`) and reads only its share ``rows[p::P]`` from the
  memory-mapped stack;
* inside the jitted step (:func:`jax.shard_map` over a mesh of one device per process),
  process ``p`` evaluates the objective on its share and the parts are summed
  (``psum``) with the weight ``B_p / B = 1 / P``. An objective is a MEAN over its batch's
  observations plus terms that do not depend on them
  (:mod:`cryosip.flows.objectives`), so

  .. math::  \sum_p \frac{B_p}{B} D(\mu; \text{share}_p) = D(\mu; \text{batch})
             \quad\text{(gradients exactly; values up to observation-only terms)},

  the single-process step up to rounding (KL, MMD; a registered sample discrepancy with
  known poses draws its simulations' nuisances from each share instead of the whole
  batch). ``B`` must be a multiple of ``P`` (equal shares keep one program for every
  process); the gradient is summed in a ``custom_vjp`` (:func:`_shared`);
* particles and weights stay replicated: every process applies the same summed gradient.
  The solver, the objective's arrays and numbers and the initial state are broadcast from
  process 0 first, so processes on different machines cannot start apart.

Only process 0 writes checkpoints and outputs (:func:`is_main`). Without a coordinator the
runtime is started from the cluster's environment under SLURM (``srun``) or Open MPI
(``mpirun``), JAX's cluster detection; :func:`launch_local` starts ``P`` processes of one
command on ``127.0.0.1`` and stops them all when one fails.

One GPU per process: each process gives JAX (``local_device_ids``) the visible GPU
``r mod G`` of its node, ``r`` its local rank (the process id given by ``--processes`` or
by hand, else SLURM's ``SLURM_LOCALID`` or Open MPI's ``OMPI_COMM_WORLD_LOCAL_RANK``), ``G``
the GPUs it can see (:func:`visible_gpus`, counted without starting JAX); on a machine
without GPUs nothing changes (:func:`local_device_ids`).

>>> parse_coordinator("node01:1234")
('node01', 1234)
>>> cluster_processes({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"})
4
>>> local_device_ids(local_rank(5, {}), n_gpus=4)  # process 5 of 8 by hand, 4 GPUs a node
[1]
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cryosip.errors import InputError

__all__ = ["AXIS", "DataParallel", "LaunchResult", "cluster_processes", "initialize",
           "is_distributed", "is_main", "launch_local", "local_device_ids", "local_rank",
           "parse_coordinator", "process_mesh", "visible_gpus"]

AXIS = "processes"
"""The mesh axis over processes (one device each)."""

_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
          "SLURM_LOCALID")  # what jax._src.clusters.SlurmCluster needs


def parse_coordinator(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (:class:`InputError` otherwise)."""
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("command line", "--coordinator", "HOST:PORT (port 1..65535)",
                         repr(text))
    return host, int(port)


def cluster_processes(environ: Mapping[str, str] | None = None) -> int:
    """Processes of the SLURM step or Open MPI job this process belongs to (1 if none).

    SLURM: the variables JAX's cluster detection reads, ``SLURM_STEP_NUM_TASKS`` (else
    ``SLURM_NTASKS``). Open MPI (``mpirun``): ``OMPI_COMM_WORLD_SIZE``.
    """
    env = os.environ if environ is None else environ
    if all(name in env for name in _SLURM):
        return int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]))
    if "OMPI_MCA_orte_hnp_uri" in env:
        return int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
    return 1


def local_rank(process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank on its node, for the choice of its GPU: ``process_id`` when
    given (``--processes``, whose processes all share the node even inside a SLURM
    allocation, and by-hand runs with consecutive ids per node), else the cluster's
    ``SLURM_LOCALID`` (SLURM) or ``OMPI_COMM_WORLD_LOCAL_RANK`` (Open MPI); ``None``
    without either."""
    if process_id is not None:
        return int(process_id)
    env = os.environ if environ is None else environ
    for name in ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if env.get(name, "").strip().isdigit():
            return int(env[name])
    return None


def visible_gpus(environ: Mapping[str, str] | None = None, dev: str = "/dev") -> int:
    """How many GPUs this process can see, counted without starting JAX's backend: the
    entries of ``CUDA_VISIBLE_DEVICES`` up to the first invalid one (CUDA's rule: ``-1``
    or empty hides them all), else the ``nvidiaN`` device files in ``dev`` (0 on a machine
    without NVIDIA GPUs)."""
    env = os.environ if environ is None else environ
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        count = 0
        for entry in given.split(","):
            if not entry.strip() or entry.strip().startswith("-"):
                break
            count += 1
        return count
    try:
        return sum(1 for name in os.listdir(dev) if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        return 0


def local_device_ids(rank: int | None, n_gpus: int) -> list[int] | None:
    """The GPU of local rank ``rank`` among ``n_gpus`` visible ones: ``[rank mod n_gpus]``
    (one each while there are at least as many GPUs as processes on the node; more
    processes share them in turn); ``None`` (JAX's default, all devices) without GPUs or
    rank.

    >>> [local_device_ids(r, 4) for r in range(5)], local_device_ids(3, 0)
    ([[0], [1], [2], [3], [0]], None)
    """
    if n_gpus < 1 or rank is None:
        return None
    return [rank % n_gpus]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start JAX's multi-process runtime; ``True`` if this process is one of several.

    All three arguments, or none: then the runtime starts only under a SLURM step or an
    Open MPI job of several processes (JAX detects coordinator, count and id). Must run
    before anything starts JAX's backend. CPU collectives are gloo. On a node with GPUs
    the process takes one (:func:`local_device_ids` of :func:`local_rank` and
    :func:`visible_gpus`).
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise InputError("command line", "--coordinator/--num-processes/--process-id",
                         "all three or none", f"{sum(given)} of them")
    if all(given):
        parse_coordinator(coordinator)
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise InputError("command line", "--process-id", f"0..{num_processes - 1} "
                             "(--num-processes >= 1)", str(process_id))
    elif cluster_processes() <= 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    devices = local_device_ids(local_rank(process_id), visible_gpus())
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   local_device_ids=devices)
    except RuntimeError as err:
        raise RuntimeError(f"jax.distributed.initialize failed: {err}") from err
    return jax.process_count() > 1


def is_distributed() -> bool:
    """Whether JAX runs on several processes (:func:`initialize`)."""
    return jax.process_count() > 1


def is_main() -> bool:
    """Whether this process writes files (process 0, or the only one)."""
    return jax.process_index() == 0


def process_mesh() -> Mesh:
    """A 1-D mesh (axis :data:`AXIS`) of the first device of every process, in process order."""
    first: dict[int, jax.Device] = {}
    for device in sorted(jax.devices(), key=lambda d: d.id):
        first.setdefault(device.process_index, device)
    return Mesh(np.array([first[p] for p in sorted(first)]), (AXIS,))


def _global(tree, mesh: Mesh, spec: P):
    """Arrays of ``tree`` (this process's part) as global arrays of ``spec`` on ``mesh``."""
    sharding = NamedSharding(mesh, spec)
    axis = None if len(spec) == 0 else list(spec).index(AXIS)

    def put(leaf):
        local = np.asarray(leaf)
        shape = list(local.shape)
        if axis is not None:
            shape[axis] *= mesh.size
        return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

    return jax.tree.map(put, tree)


def _local(tree):
    """This process's copy of replicated global arrays, as local arrays."""
    return jax.tree.map(lambda a: jnp.asarray(a.addressable_data(0)), tree)


def _broadcast(tree):
    """``tree`` as process 0 has it: array leaves and Python floats (kept Python floats)."""
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    chosen = [i for i, x in enumerate(leaves)
              if isinstance(x, float) or (eqx.is_array(x)
                                          and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key))]
    sent = multihost_utils.broadcast_one_to_all([np.asarray(leaves[i]) for i in chosen])
    for i, value in zip(chosen, sent, strict=True):
        leaves[i] = float(value) if isinstance(leaves[i], float) else jnp.asarray(value)
    return jax.tree.unflatten(treedef, leaves)


def _shared(objective: Callable, fraction: float) -> Callable:
    """``psum_p(fraction * objective(x, w, share_p, key))`` with the gradient summed the
    same way: the local vjp's result is psum'd in the forward pass (the forward model's own
    ``custom_vjp`` rules do not track which values vary across processes, so the sum is
    written out rather than left to the transpose of ``psum``)."""

    def part(positions, weights, batch, key):
        return fraction * objective(positions, weights, batch, key)

    @jax.custom_vjp
    def total(positions, weights, batch, key):
        return jax.lax.psum(part(positions, weights, batch, key), AXIS)

    def forward(positions, weights, batch, key):
        value, vjp = jax.vjp(lambda x, w: part(x, w, batch, key), positions, weights)
        grads = jax.lax.psum((value, *vjp(jnp.ones_like(value))), AXIS)
        return grads[0], grads[1:]

    def backward(grads, cotangent):
        g_x, g_w = grads
        return cotangent * g_x, cotangent * g_w, None, None

    total.defvjp(forward, backward)
    return total


@functools.lru_cache(maxsize=16)
def _program(scan: Callable, static, mesh: Mesh, impl, count: int):
    """The jitted chunk over ``mesh``: ``(arrays, batches, state, key_data, start) ->
    (state, losses)``, the objective's parts summed (:func:`_shared`)."""

    def body(arrays, batches, state, key_data, start):
        solver, objective = eqx.combine(arrays, static)
        key = jax.random.wrap_key_data(key_data, impl=impl)
        return scan(solver, _shared(objective, 1.0 / count), batches, state, key, start)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(None, AXIS), P(), P(), P()),
                                 out_specs=(P(), P()), check_vma=False))


@dataclasses.dataclass
class DataParallel:
    """A flow's chunks on all processes (module docstring).

    ``scan(solver, objective, batches, state, key, start) -> (state, losses)`` is the
    driver's chunk body (a ``lax.scan`` over the leading step axis of ``batches``).
    ``solver`` and ``objective`` are taken as process 0 has them.
    """

    scan: Callable
    solver: object
    objective: Callable
    key: jax.Array

    def __post_init__(self) -> None:
        self.mesh = process_mesh()
        self.count, self.index = jax.process_count(), jax.process_index()
        arrays, self._static = eqx.partition(_broadcast((self.solver, self.objective)),
                                             eqx.is_array)
        self._arrays = _global(arrays, self.mesh, P())
        impl = jax.random.key_impl(self.key)
        self._key_data = _global(jax.random.key_data(self.key), self.mesh, P())
        program = (self.scan, self._static, self.mesh, impl, self.count)
        try:  # one compiled program per problem, as a single process's jit cache gives
            self._run = _program(*program)
        except TypeError:  # a static part that cannot be hashed: this run's own program
            self._run = _program.__wrapped__(*program)

    def check_batch(self, batch_size: int) -> None:
        """Equal shares: ``batch_size`` a multiple of the number of processes."""
        if batch_size % self.count:
            raise InputError("command line", "--batch-size", f"a multiple of the number of "
                             f"processes ({self.count})", str(batch_size))

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This process's rows of a minibatch: ``rows[p::P]``."""
        return np.asarray(rows)[self.index::self.count]

    def broadcast(self, state):
        """``state`` as process 0 has it."""
        return _broadcast(state)

    def check_same(self, value: int, message: str) -> None:
        """Stop every process with ``message`` unless all hold the same ``value``."""
        from jax.experimental import multihost_utils

        try:
            multihost_utils.assert_equal(np.asarray(value), message)
        except AssertionError as err:
            raise RuntimeError(f"{message}; found {err}") from None

    def advance(self, batches, state, start: int):
        """``(state, losses)`` after the chunk of this process's ``batches`` (leading axis:
        steps; second: this process's share), as local arrays equal on every process."""
        out = self._run(self._arrays, _global(batches, self.mesh, P(None, AXIS)),
                        _global(state, self.mesh, P()), self._key_data,
                        _global(np.asarray(start, np.int32), self.mesh, P()))
        return _local(out)


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """Exit of :func:`launch_local`: ``returncode`` 0, or the first failure's code and
    process id (the others were stopped)."""

    returncode: int
    failed_process: int | None = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(command: Sequence[str], n_processes: int,
                 poll_s: float = 0.1) -> LaunchResult:
    """Run ``command --coordinator 127.0.0.1:PORT --num-processes P --process-id I`` for
    ``I = 0..P-1`` and wait; the first process to fail stops the others (no hang). Each
    process picks its own GPU where there are GPUs (:func:`initialize`: process ``I`` takes
    visible GPU ``I mod G``)."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([*command, "--coordinator", coordinator, "--num-processes",
                               str(n_processes), "--process-id", str(i)])
             for i in range(n_processes)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                return LaunchResult(failed[0][1], failed[0][0])
            if all(c == 0 for c in codes):
                return LaunchResult(0)
            time.sleep(poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
