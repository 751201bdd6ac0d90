"""Devices, mixed precision and torchrun/DDP set-up, shared by every training loop."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import NemesisInputError


#: A file whose appearance in a run folder asks the run to save at its next step and stop.
STOP_FILE = "STOP"
#: When this process loaded the training code: a ``STOP`` file older than that is a stale one.
_LOADED_AT = time.time()
_STOP = threading.Event()
#: Held while a resumable checkpoint is being written (a process ending itself waits for it).
SAVE_LOCK = threading.RLock()


def request_stop() -> None:
    """Ask the training loop of this process to save at its next step and stop.

    The channel that works whatever the process's SIGINT disposition (a child started with SIGINT
    ignored, e.g. under ``nohup napari &``): the child watcher of ``viewer._process`` calls it on a
    ``stop`` line from its parent and when the parent is gone. Stays set for the process's life.
    """
    _STOP.set()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called in this process."""
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a stop request (tests, or a process that runs several trainings one after another)."""
    _STOP.clear()


def stop_file_requested(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir/STOP`` exists (created by a user or a parent process to stop the run)."""
    return (Path(run_dir) / STOP_FILE).exists()


def drop_stale_stop_file(run_dir: str | os.PathLike) -> None:
    """Remove a ``STOP`` file left by an earlier run (older than this process's training code)."""
    path = Path(run_dir) / STOP_FILE
    try:
        if path.stat().st_mtime < _LOADED_AT:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def wait_for_save(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a checkpoint save in progress to finish; True when none is."""
    if SAVE_LOCK.acquire(timeout=max(0.0, timeout)):
        SAVE_LOCK.release()
        return True
    return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() if dist_env() else torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NemesisInputError("--device cuda: no CUDA device is available on this machine")
        if name == "cuda" and dist_env():
            return torch.device("cuda", _local_rank())
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise NemesisInputError("--device mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise NemesisInputError(f"--device {name}: choose auto, cpu, cuda or mps")


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on the given device, or a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def single_thread():
    """Run the block on one CPU thread, then restore the count. For loops of tiny tensor ops (a
    probe head's steps on frozen features: a few kB each), where waking torch's thread pool costs
    more than the work: on a busy 2-core machine a head step took 17-50 ms with 2 threads, 1.3 ms
    with one (docs/performance.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_bf16(device: torch.device) -> bool:
    """bf16 by default on CUDA cards that support it; off on CPU/MPS unless asked for."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def dist_env() -> bool:
    """True when launched by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self, finished: bool = False) -> None:
        """Leave the process group. A run that ``finished`` on every rank waits for the others first:
        a rank that tore gloo down while rank 0 still wrote its last checkpoint could abort in gloo's
        threads ("terminate called without an active exception"). A failed rank leaves at once (the
        others may never reach a barrier)."""
        if self.initialised_here and torch.distributed.is_initialized():
            if finished and self.world > 1:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group (nccl on CUDA, gloo otherwise); a no-op for one process."""
    if not dist_env():
        return DistInfo()
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank(), here)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in state-dict order (compares replicas bit for bit)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
