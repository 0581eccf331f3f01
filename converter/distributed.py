"""``evaluate`` across processes: torchrun on several GPUs or machines (torch.distributed).

Under ``torchrun`` (WORLD_SIZE > 1 in the environment) each process joins the process group
(NCCL on GPUs, gloo on CPU), takes its own share of the sorted image list (image ``i`` goes to
rank ``i % world``: every image exactly once, uneven splits included, no padding), evaluates it
on its own device (``cuda:LOCAL_RANK``), and the counts are gathered: rank 0 prints and writes
the results, which are those of one process over the same images. An error on any rank (an
unreadable image) stops every rank with that rank's message, instead of leaving the others
waiting. Without torchrun nothing changes: one process, all images.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, TypeVar

from .errors import ConversionError

T = TypeVar("T")


def share(items: Sequence[T], rank: int, world: int) -> List[T]:
    """Rank ``rank``'s share of ``items`` among ``world`` processes: items ``rank, rank + world, ...``."""
    if not 0 <= rank < world:
        raise ConversionError(f"rank {rank} outside a world of {world} processes")
    return list(items[rank::world])


@dataclass
class Session:
    """This process's place in the evaluation: ``world`` processes, this one ``rank``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: one process, no process group
    shares: List[int] = field(default_factory=list)  # images per rank, after gather

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str = "auto") -> "Session":
        """Join torchrun's process group when launched by it (WORLD_SIZE > 1), else a one-process session.

        ``device``: the evaluate option; on CUDA each process takes GPU ``LOCAL_RANK`` (so that
        ``cuda`` means that GPU from here on) and NCCL; on CPU, gloo.
        """
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if not torch.cuda.is_available():
                raise ConversionError("--device cuda: PyTorch sees no GPU; use --device cpu or auto")
            if local >= torch.cuda.device_count():
                raise ConversionError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s): "
                                      "torchrun --nproc_per_node must not exceed the GPUs")
            torch.cuda.set_device(local)
        backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
            atexit.register(_finish)
        return cls(rank=rank, world=world, local_rank=local, backend=backend)

    def share(self, items: Sequence[T]) -> List[T]:
        return share(items, self.rank, self.world)

    def gather(self, run: Callable[[], T]) -> List[T]:
        """Every rank's ``run()``, in rank order, on every rank; the first error (by rank) is
        raised on all of them."""
        try:
            mine, error = run(), None
        except ConversionError as e:
            mine, error = None, str(e)
        if self.world == 1:
            if error is not None:
                raise ConversionError(error)
            return [mine]
        import torch.distributed as dist

        everyone: List[object] = [None] * self.world
        dist.all_gather_object(everyone, (mine, error))
        for r, (_, err) in enumerate(everyone):
            if err is not None:
                raise ConversionError(err if r == self.rank else f"(process {r}) {err}")
        return [res for res, _ in everyone]


def _finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def evaluate_shared(session: Session, items: Sequence, evaluate: Callable[[Sequence], object]):
    """``evaluate`` (predict.evaluate_items over a list of items: an EvalResult) on this rank's
    share; the results of all ranks combined: counts summed, seconds of the slowest rank."""
    mine = session.share(items)
    # None: a process left without images (fewer images than processes)
    parts = session.gather(lambda: evaluate(mine) if mine or session.world == 1 else None)
    session.shares = [p.images if p is not None else 0 for p in parts]
    done = [p for p in parts if p is not None]
    if session.world == 1 or not done:
        return parts[0]
    n = sum(p.images for p in done)
    if n != len(items):
        raise ConversionError(f"internal error: {n} images evaluated by {session.world} processes, {len(items)} listed")
    c1, c5 = sum(p.top1_correct for p in done), sum(p.top5_correct for p in done)
    seconds = max(p.seconds for p in done)
    return dataclasses.replace(done[0], top1=100.0 * c1 / n, top5=100.0 * c5 / n, top1_correct=c1, top5_correct=c5,
                               images=n, seconds=seconds, images_per_s=n / seconds if seconds > 0 else float("inf"))
