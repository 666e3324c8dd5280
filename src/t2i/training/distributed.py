"""Training in several processes (torchrun + DistributedDataParallel) that trains as one process does.

`torchrun --nproc_per_node N -m t2i train ...` starts N copies of the command. Each reads its rank
from torchrun's environment (`World.from_environment`) and joins the group: NCCL with the GPU of
its local rank, or gloo on CPUs. The rule that makes the number of processes not matter:

- step k's batch is the run's (`batch_size` examples chosen from (seed, k): `batches.StepBatchSampler`),
  cut into one contiguous share per rank (`World.share`), a share into micro-batches of
  `micro_batch_size` (gradient accumulation);
- every example draws its noise, timestep, latent sample and caption dropout from its own generator,
  seeded by (seed, k, its position in the batch) (`batches.example_generators`), not from one
  generator for the batch;
- each micro-batch's mean loss is weighted by its share of the process's examples before its
  backward pass, and DDP averages the gradients over the processes: the gradient of the batch's mean
  loss, as one process computes it, up to the order of floating-point sums.

Rank 0 alone writes (checkpoints, loss.csv, samples, the run's lock); every rank reads. What only
one rank may know (a stop request, bad input met by one rank's share, an error of rank 0's) is
agreed on by all before anyone acts on it, so no rank waits alone in a collective.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..errors import UserError

T = TypeVar("T")

# How long the other ranks wait for rank 0's own work (`on_main`, `main_first`): it encodes a dataset's caches and
# writes checkpoints alone (hours for a large set; NCCL's default timeout is 10 minutes), and its failures reach
# them at once. These waits go through a gloo group of their own, so the training's collectives keep the default.
RANK_0_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place among a run's processes: one process alone by default."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    waits: object = field(default=None, compare=False, repr=False)  # the gloo group of the waits for rank 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, device: torch.device) -> "World":
        """The world torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK (joined here), or one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(local_rank)
            backend = "nccl" if device.type == "cuda" else "gloo"
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                # torchrun's agent keeps one store across restarts: without a prefix of its own, a restarted
                # group would read the dead attempt's addresses from it and fail to connect
                store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                                      is_master=False, timeout=timedelta(minutes=10))
                attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
                dist.init_process_group(backend, store=dist.PrefixStore(f"t2i/attempt-{attempt}", store),
                                        rank=int(os.environ["RANK"]), world_size=size)
            else:
                dist.init_process_group(backend)
        waits = dist.new_group(backend="gloo", timeout=RANK_0_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, waits)

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: the local rank's."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.distributed else device

    def share(self, batch_size: int) -> range:
        """The positions in a step's batch that this rank computes."""
        if batch_size % self.size:
            raise UserError(f"batch_size {batch_size} does not split evenly over {self.size} processes: choose a "
                            f"multiple of {self.size}")
        per = batch_size // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over the ranks of each value (each rank's losses are its share's means)."""
        if not self.distributed or not values:
            return values
        names = sorted(values)
        tensor = torch.tensor([values[name] for name in names], dtype=torch.float64)
        dist.all_reduce(self._on_backend(tensor))
        return {name: value / self.size for name, value in zip(names, tensor.tolist())}

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set (a stop request, a failure): every rank gets the same answer."""
        if not self.distributed:
            return flag
        tensor = self._on_backend(torch.tensor([int(flag)]))
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def on_main(self, work: Callable[[], T]) -> T | None:
        """Run `work` on rank 0 alone. If it fails, every rank raises (rank 0 its error, the others a UserError
        saying so), so none waits for rank 0 in a collective that will not come."""
        error: BaseException | None = None
        result = None
        if self.main:
            try:
                result = work()
            except Exception as raised:
                error = raised
        self.share_failure(error)
        return result

    def share_failure(self, error: BaseException | None) -> None:
        """Raise on every rank if rank 0 met `error` (None: it did not): rank 0 raises it, the others a
        UserError with its message (a UserError's own, or what failed)."""
        if self.distributed:
            message = [None if error is None else str(error) if isinstance(error, UserError)
                       else f"the main process failed: {type(error).__name__}: {error}"]
            dist.broadcast_object_list(message, src=0, group=self.waits)
            if message[0] is not None and error is None:
                raise UserError(message[0])
        if error is not None:
            raise error

    def _on_backend(self, tensor: torch.Tensor) -> torch.Tensor:
        if dist.get_backend() == "nccl":
            return tensor.cuda()
        return tensor


def micro_batches(count: int, micro: int) -> list[slice]:
    """Slices of a process's `count` examples, `micro` at a time (the last may be smaller)."""
    return [slice(start, min(start + micro, count)) for start in range(0, count, micro)]


def accumulate(loss_of: Callable[[slice], dict[str, torch.Tensor]], count: int, micro: int,
               replicas: list[torch.nn.Module], scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss
               ) -> dict[str, torch.Tensor]:
    """Backpropagate the "loss" of every micro-batch of a process's `count` examples, weighted by its
    share of them (and `scale`d: float16's loss scaling), with DDP's gradient averaging only after the
    last (`no_sync` before it); return each loss's mean over the examples (detached). `loss_of(part)`
    returns a micro-batch's mean losses."""
    parts = micro_batches(count, micro)
    totals: dict[str, torch.Tensor] = {}
    for i, part in enumerate(parts):
        with contextlib.ExitStack() as stack:
            if i < len(parts) - 1:
                for replica in replicas:
                    if isinstance(replica, torch.nn.parallel.DistributedDataParallel):
                        stack.enter_context(replica.no_sync())
            losses = loss_of(part)
            weight = (part.stop - part.start) / count
            scale(losses["loss"] * weight).backward()
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + value.detach() * weight
    return totals


def replicate(network: torch.nn.Module, world: World) -> torch.nn.Module:
    """The network as the step calls it: wrapped in DDP across processes (gradients averaged in the
    backward pass), itself in one."""
    if not world.distributed:
        return network
    device_ids = [world.local_rank] if next(network.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 goes first (builds a cache), the others after it (read the cache); if rank 0 fails, so do they."""
    if world.main:
        try:
            yield
        except Exception as error:
            world.share_failure(error)
        world.share_failure(None)
    else:
        world.share_failure(None)
        yield


def join(device_name: str) -> tuple[World, torch.device]:
    """This process's world (joining torchrun's group) and the device it trains on."""
    device = resolve_device(device_name)
    if device.type == "cuda":  # TF32 matmuls and convolutions: float32's range, ample precision for training
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    world = World.from_environment(device)
    return world, world.device(device)


@contextlib.contextmanager
def main_locks(out: Path, world: World, new: bool = False) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (`run_folder.lock_run`, which cleans or settles the folder)
    before any rank reads the folder; its refusal is every rank's."""
    from .run_folder import lock_run

    with contextlib.ExitStack() as stack:
        world.on_main(lambda: stack.enter_context(lock_run(out, new)))
        yield


def restarted(out: Path) -> bool:
    """Whether torchrun restarted this process's group after a failure (`--max-restarts`) and the run
    has a checkpoint: the same command then resumes it instead of starting it again."""
    from .run_folder import current_checkpoint

    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and current_checkpoint(Path(out)) is not None


@contextlib.contextmanager
def leaving(world: World) -> Iterator[None]:
    """The group is left when the run ends. A run that finished waits first for every rank to finish too:
    a rank that closed its connections while another still used them (rank 0 writing the last checkpoint)
    could abort that one at exit. A failed run does not wait, as the others may never come."""
    try:
        yield
        world.barrier()
    finally:
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()
