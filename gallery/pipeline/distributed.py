"""Running the gallery's units in one process, or across MPI ranks (`mpiexec -n N`).

One process is the default and needs no MPI (mpi4py is imported only when the program was
started by an MPI launcher). Under `mpiexec -n N` / `srun`, rank 0 runs the program and
hands units to the other ranks through `mpi4py.futures.MPICommExecutor` (a dynamic task
pool: a rank takes the next ready unit when it finishes one); rank 0 computes units too
while every worker is busy, and alone assembles and writes. The other ranks only serve the
pool and exit when rank 0 is done.

Each rank uses `cores // ranks on this node` torch threads (at least 1), and loads a policy
once per model (`cached_policy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Environment variables MPI launchers set (MPICH/Hydra, Open MPI, Intel MPI, SLURM's PMI).
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                      "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")
#: Set to 0 to ignore an MPI launcher (run every rank as an independent process).
DISABLE_VARIABLE = "GALLERY_MPI"


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process (and MPI is not disabled)."""
    if os.environ.get(DISABLE_VARIABLE, "") == "0":
        return False
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


@dataclass
class Context:
    """Where this process stands: rank, size, ranks on this node, the pool (rank 0)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    executor: Any = None
    """On rank 0 with size > 1: an executor whose `submit` runs on the other ranks."""

    @property
    def workers(self) -> int:
        return self.size - 1 if self.executor is not None else 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0


_CURRENT = Context()


def current() -> Context:
    """The context of the innermost `session` (a single process outside of one)."""
    return _CURRENT


@contextlib.contextmanager
def session(threads: int | None = None) -> Iterator[Context | None]:
    """The MPI pool for the duration of a command.

    Yields the Context on rank 0 (and in a single process); yields None on the other
    ranks after they served the pool until rank 0 left the block: the caller then returns.
    """
    global _CURRENT
    if not launched_by_mpi():
        context = Context()
        configure_threads(context, threads)
        yield context
        return
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    context = Context(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size())
    local.Free()
    configure_threads(context, threads)
    if context.size == 1:
        _CURRENT = context
        try:
            yield context
        finally:
            _CURRENT = Context()
        return
    if context.rank != 0:
        # Ctrl-C reaches every rank (the launcher forwards it): workers finish the unit in
        # hand and keep serving; rank 0 stops handing out units, waits for those in flight,
        # prints its summary and shuts the pool down
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with MPICommExecutor(comm, root=0) as executor:
        if executor is None:  # a worker: served units until rank 0 shut the pool down
            yield None
            return
        context.executor = executor
        _CURRENT = context
        try:
            yield context
        finally:
            _CURRENT = Context()


def threads_per_rank(local_size: int, cores: int | None = None) -> int:
    """Torch threads for one of `local_size` ranks sharing this node's cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, cores // max(1, local_size))


def configure_threads(context: Context, threads: int | None = None) -> int:
    """Set torch's intra-op threads for this rank (`threads`, else cores // local ranks)."""
    import torch

    count = threads or threads_per_rank(context.local_size)
    torch.set_num_threads(count)
    log.debug("rank %d/%d: %d torch thread(s)", context.rank, context.size, count)
    return count


#: The process's default device (set by `gallery build --device`, inherited by MPI ranks).
DEVICE_ENV = "GALLERY_DEVICE"


def resolve_device(name: str | None, local_rank: int = 0) -> str:
    """'cpu', 'cuda' (the GPU of this node's rank: local_rank % GPUs) or 'cuda:N'; None
    means $GALLERY_DEVICE, else 'cpu'. Refuses cuda when no GPU is visible."""
    import torch

    from gallery.errors import UsageError

    name = name or os.environ.get(DEVICE_ENV) or "cpu"
    if name == "cpu":
        return "cpu"
    if not name.startswith("cuda"):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, not {name!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible to this process")
    count = torch.cuda.device_count()
    if name == "cuda":
        return f"cuda:{local_rank % count}"
    index = name.removeprefix("cuda:")
    if not index.isdigit() or int(index) >= count:
        raise UsageError(f"--device {name}: this process sees {count} GPU(s), "
                         f"cuda:0 to cuda:{count - 1}")
    return name


_POLICIES: dict[tuple[str | None, str | None, str], Any] = {}


def cached_policy(checkpoint: str | None, adapter: str | None = None, device: str = "cpu") -> Any:
    """The policy of `checkpoint`, loaded once per process (the last few models kept)."""
    key = (checkpoint, adapter, device)
    policy = _POLICIES.get(key)
    if policy is None:
        from gallery.models.adapters import load_any

        policy = load_any(checkpoint, adapter=adapter)
        policy.eval()
        if device != "cpu":
            policy.to(device)
        while len(_POLICIES) >= 4:
            _POLICIES.pop(next(iter(_POLICIES)))
        _POLICIES[key] = policy
    return policy
