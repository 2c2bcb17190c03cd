"""Several processes (``torchrun``): which rank this is, and rank 0's values shared with all."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from src_monai.io.files import write_text
from src_monai.model.networks import plain_state_dict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank (each rank learns the same answer)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size())


def write_rank_checksum(run_dir: Path, network, dist: Distributed) -> None:
    digest = hashlib.sha256()
    for name, tensor in sorted(plain_state_dict(network).items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    (run_dir / "ranks").mkdir(exist_ok=True)
    write_text(
        run_dir / "ranks" / f"rank{dist.rank}.sha256", digest.hexdigest() + "\n", overwrite=True
    )
