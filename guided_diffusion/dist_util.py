"""Processes and devices: the ONLY module that imports mpi4py or torch.distributed.

Both are imported inside functions, and everything degrades to one process when neither a
launcher nor MPI is present. Library code never calls this module; scripts call
:func:`setup_dist` once and pass ``rank`` / ``world_size`` down as plain ints.

Launchers understood by :func:`setup_dist` (:func:`launcher_env` reads the environment):
  * ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment);
  * ``mpiexec -n N`` (mpi4py; rank 0 picks a free port and broadcasts it);
  * ``srun`` (SLURM_PROCID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS, SLURM_LOCALID; the rendezvous host
    is MASTER_ADDR or the first node of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST, the port MASTER_PORT
    or 15000 + SLURM_JOB_ID mod 20000, the same on every task without talking);
  * nothing: a single process, no process group.
A launcher environment that is half set (e.g. RANK without WORLD_SIZE, SLURM_PROCID without
SLURM_NTASKS) is a one-line ValueError naming the missing variable.
Each rank uses GPU ``local_rank % torch.cuda.device_count()`` when CUDA is present (restrict the
set with CUDA_VISIBLE_DEVICES), else the CPU with the gloo backend; on the CPU, several processes
on one machine split its cores (``torch.set_num_threads``) unless OMP_NUM_THREADS is set.
"""

import io
import os
import socket
from dataclasses import dataclass

import torch

CHUNK_BYTES = 2**30  # checkpoint broadcast chunk size


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


_INFO = DistInfo()


def _mpi_comm():
    """COMM_WORLD if mpi4py imports and we run under an MPI launcher with > 1 process, else None."""
    try:
        from mpi4py import MPI  # noqa: WPS433 (imported here on purpose)
    except Exception:  # mpi4py missing or its MPI library broken: one process
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _mpi_local_rank(comm):
    for key in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


_LOCAL_SIZE_KEYS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE",
                    "MV2_COMM_WORLD_LOCAL_SIZE")


def _launcher_local_size():
    """Processes on this machine as the launcher (torchrun, mpiexec) announces them, else 1."""
    for key in _LOCAL_SIZE_KEYS:
        if os.environ.get(key, "").isdigit():
            return max(1, int(os.environ[key]))
    return 1


def _mpi_local_size(comm):
    for key in _LOCAL_SIZE_KEYS[1:]:
        if key in os.environ:
            return int(os.environ[key])
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


THREADS_ENV = "GD_NUM_THREADS"  # the project's override of the CPU thread count
MAX_DEFAULT_THREADS = 16  # the small UNets here gain little beyond this; a 64-core machine keeps cores free


def default_cpu_threads(cores, local_processes=1, load=0.0):
    """The default CPU threads per process: ``max(1, min(16, (cores - busy) // local_processes))``.

    ``busy`` = ``int(load)`` (the 1-minute load average when the process starts: cores other jobs
    keep running) clamped to ``[0, cores - 1]``. A quiet 2-core machine gets 2 threads, a 2-core
    machine with other work 1 (two spinning threads on one free core were 3-4x slower than one),
    ``mpiexec -n 2`` on 2 cores 1 each, a quiet 64-core workstation 16. The thread count does not
    change the samples' bytes.
    """
    busy = min(max(int(load), 0), max(cores - 1, 0))
    return max(1, min(MAX_DEFAULT_THREADS, (cores - busy) // max(1, int(local_processes))))


def set_cpu_threads(local_processes=None):
    """Set torch's CPU thread count once per process; return (threads, where the number came from).

    ``OMP_NUM_THREADS`` set: left to it. ``GD_NUM_THREADS=N``: N. Otherwise
    :func:`default_cpu_threads` of this process's cores, the processes on this machine (from the
    launcher's environment unless given) and the load average. Called by the command-line runner
    (``guided_diffusion.cli.run_cli``) before a script starts and by :func:`setup_dist`.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    value = os.environ.get(THREADS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: expected a whole number of threads >= 1 (or unset it)")
        threads, source = int(value), THREADS_ENV
    else:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        local = _launcher_local_size() if local_processes is None else local_processes
        threads, source = default_cpu_threads(_cpu_count(), local, load), "default"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads, source


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


_MPI_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")


def _int_var(env, name):
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"launcher environment: {name}={env[name]!r} is not an integer") from None


def first_host(nodelist):
    """The first host of SLURM's compact node list: "gpu[07-09,12],cpu1" -> "gpu07" (zero padding kept)."""
    text = nodelist.strip()
    head = text.split(",", 1)[0] if "[" not in text.split(",", 1)[0] else text[: text.index("]") + 1]
    if "[" not in head:
        return head
    prefix, rng = head.split("[", 1)
    first = rng.rstrip("]").split(",", 1)[0].split("-", 1)[0]
    return prefix + first


def _leading_int(text, default):
    """2 from SLURM's tasks-per-node forms "2", "2(x3)" or "2(x2),1"."""
    digits = ""
    for ch in text or "":
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else default


def launcher_env(env=None):
    """(launcher, rank, world, local_rank, local_world, {MASTER_ADDR, MASTER_PORT} to set) from the
    environment ``env`` (default ``os.environ``); launcher is "torchrun", "slurm", "mpi" (mpi4py
    decides the ranks) or None (look for MPI, else one process).

    :raises ValueError: one line naming the variable a half-set launcher environment lacks.
    """
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        for name in ("RANK", "WORLD_SIZE"):
            if name not in env:
                raise ValueError(f"launcher environment half set: {'RANK' if name == 'WORLD_SIZE' else 'WORLD_SIZE'} "
                                 f"is set but {name} is not; launch with torchrun (it sets both) or unset it")
        rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        if world > 1:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in env:
                    raise ValueError(f"launcher environment half set: RANK and WORLD_SIZE are set but {name} is "
                                     "not; launch with torchrun (it sets it) or export it")
        local = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        local_world = _int_var(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        return "torchrun", rank, world, local, local_world, {}
    if any(name in env for name in _MPI_VARS):
        return "mpi", 0, 1, 0, 1, {}
    if "SLURM_PROCID" in env:
        tasks = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        if tasks not in env:
            raise ValueError("launcher environment half set: SLURM_PROCID is set but SLURM_NTASKS is not; start "
                             "the tasks with srun (it sets both) or unset SLURM_PROCID")
        rank, world = _int_var(env, "SLURM_PROCID"), _int_var(env, tasks)
        if world <= 1:
            return None, 0, 1, 0, 1, {}
        if "SLURM_LOCALID" not in env:
            raise ValueError("launcher environment half set: SLURM_PROCID is set but SLURM_LOCALID is not; start "
                             "the tasks with srun")
        local = _int_var(env, "SLURM_LOCALID")
        local_world = _leading_int(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE"), world)
        addr = env.get("MASTER_ADDR")
        if not addr:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodes:
                raise ValueError("launcher environment half set: SLURM_PROCID is set but neither SLURM_JOB_NODELIST "
                                 "nor MASTER_ADDR is; start the tasks with srun or export MASTER_ADDR")
            addr = first_host(nodes)
        port = env.get("MASTER_PORT") or str(15000 + _int_var(env, "SLURM_JOB_ID") % 20000
                                             if "SLURM_JOB_ID" in env else 29500)
        if not 0 <= rank < world:
            raise ValueError(f"launcher environment: SLURM_PROCID {rank} is not below the task count {world}")
        return "slurm", rank, world, local, local_world, {"MASTER_ADDR": addr, "MASTER_PORT": str(port)}
    return None, 0, 1, 0, 1, {}


def setup_dist(backend=None):
    """Start the process group if there is more than one process; return this process's DistInfo."""
    global _INFO
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _INFO
    launcher, rank, world, local, local_world, rendezvous = launcher_env()
    if launcher == "slurm":
        os.environ.update(rendezvous, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    if launcher not in ("torchrun", "slurm"):
        comm = _mpi_comm()
        if comm is None:
            _INFO = DistInfo()
            return _INFO
        rank, world, local = comm.Get_rank(), comm.Get_size(), _mpi_local_rank(comm)
        local_world = _mpi_local_size(comm)
        addr = "127.0.0.1" if not torch.cuda.is_available() else socket.gethostbyname(socket.getfqdn())
        addr = comm.bcast(addr if rank == 0 else None, root=0)
        port = comm.bcast(_free_port() if rank == 0 else None, root=0)
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    else:
        set_cpu_threads(local_world)  # ranks on one machine share its cores
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    _INFO = DistInfo(rank, world, local, local_world)
    return _INFO


def info():
    """This process's DistInfo (single process until ``setup_dist`` says otherwise)."""
    return _INFO


def get_rank():
    return _INFO.rank


def get_world_size():
    return _INFO.world_size


def is_distributed():
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dev():
    """This rank's device: its GPU when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", _INFO.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _comm_device():
    import torch.distributed as dist

    return dev() if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_bytes(data):
    """Rank 0's ``data`` (bytes) on every rank, sent in chunks of CHUNK_BYTES."""
    if not is_distributed():
        return data
    import torch.distributed as dist

    device = _comm_device()
    length = torch.tensor([len(data) if get_rank() == 0 else 0], dtype=torch.long, device=device)
    dist.broadcast(length, 0)
    n = int(length.item())
    out = bytearray(n) if get_rank() != 0 else None
    for start in range(0, n, CHUNK_BYTES):
        size = min(CHUNK_BYTES, n - start)
        if get_rank() == 0:
            buf = torch.frombuffer(bytearray(data[start : start + size]), dtype=torch.uint8).to(device)
        else:
            buf = torch.empty(size, dtype=torch.uint8, device=device)
        dist.broadcast(buf, 0)
        if get_rank() != 0:
            out[start : start + size] = buf.cpu().numpy().tobytes()
    return data if get_rank() == 0 else bytes(out)


def read_file_on_rank0(path):
    """Bytes of ``path``, read once on rank 0 and broadcast (errors are raised on every rank)."""
    data, err = b"", ""
    if get_rank() == 0:
        from . import io_util

        try:
            data = io_util.read_bytes(path)
        except ValueError as exc:  # blobfile not installed
            err = str(exc)
        except Exception as exc:  # OSError, or blobfile's errors for a cloud path
            err = f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})"
    err = broadcast_object(err)
    if err:
        raise FileNotFoundError(err)
    return broadcast_bytes(data)


def load_state_dict(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``, read on rank 0 only and broadcast to the others."""
    data = read_file_on_rank0(path)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def broadcast_object(obj):
    """Rank 0's picklable ``obj`` on every rank."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def all_gather_object(obj):
    """A list of every rank's ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_ints(values):
    """Element-wise sums over ranks of a list of ints (the list itself with one process)."""
    return [int(v) for v in all_reduce_floats(values)]


def all_reduce_floats(values):
    """Element-wise sums over ranks of a list of numbers, as float64 (exact for counts below 2**53)."""
    values = [float(v) for v in values]
    if not is_distributed():
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def sync_params(params):
    """Copy rank 0's parameters to every rank."""
    if not is_distributed():
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p, 0)


def wrap_ddp(model):
    """``DistributedDataParallel(model)`` when distributed (gloo on CPU, nccl on this rank's GPU),
    else ``model`` itself. Gradients are averaged over ranks; use ``.no_sync()`` to accumulate."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = dev()
    return DistributedDataParallel(
        model,
        device_ids=[device] if device.type == "cuda" else None,
        output_device=device if device.type == "cuda" else None,
        broadcast_buffers=False,
        bucket_cap_mb=128,
        find_unused_parameters=False,
    )


def barrier():
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def cleanup():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ the rank protocol of a job
def check_all(exc):
    """Collective: if any rank holds an exception, the first such rank raises it, the others StopRun.

    :param exc: this rank's exception, or None.
    """
    from .errors import StopRun

    failed = [r for r in all_gather_object(None if exc is None else get_rank()) if r is not None]
    if not failed:
        return
    if exc is not None and failed[0] == get_rank():
        raise exc
    raise StopRun(f"rank {failed[0]} failed")


def on_rank0(fn):
    """Collective: ``fn()`` on rank 0, its result broadcast; if it raised, rank 0 re-raises, the others StopRun."""
    from .errors import StopRun

    result, exc = None, None
    if get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # reported below, on rank 0 only
            exc = e
    failed, result = broadcast_object((exc is not None, result))
    if failed:
        if exc is not None:
            raise exc
        raise StopRun("rank 0 failed")
    return result
