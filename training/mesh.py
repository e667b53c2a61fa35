"""The 2-D device mesh of a training run: data parallel x tensor parallel.

``torchrun`` starts ``world = nodes x nproc_per_node`` processes; the mesh has shape
(dp, tp) = (world / tp, tp) with tensor-parallel ranks adjacent (one tp group stays on one
node when tp divides nproc_per_node, so its all-reduces use the fast intra-node links). The
"tp" dimension's process group drives our Megatron layers (``TPGroup``); the "dp" dimension's
group is handed to DDP. gloo on CPU, NCCL on GPU (gloo kept beside it for CPU-side barriers).

Launch::

    # one node, 8 GPUs, tp=2 x dp=4
    torchrun --nproc-per-node 8 -m training train --tp 2 ...
    # several nodes: the same command on each, with torchrun's c10d rendezvous
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id RUN_NAME --max-restarts 3 -m training train --tp 8 ...

Without torchrun (no RANK in the environment) the process is a world of one.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from training.parallel import TPGroup


@dataclass(frozen=True)
class Mesh:
    device_mesh: DeviceMesh
    device: torch.device
    rank: int  # global rank
    world_size: int
    local_rank: int
    tp: TPGroup
    dp_group: Any  # dist.ProcessGroup
    dp_rank: int
    dp_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()


def world_size_from_env() -> int:
    """The world torchrun will give this process (1 outside torchrun), without initialising."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _attempt_store() -> dist.Store | None:
    """Under torchrun, the rendezvous store with a prefix for this restart attempt.

    torchrun keeps one TCP store for the whole job and the workers of a restarted group find
    the previous attempt's keys in it: gloo then reads a dead peer's address and fails to
    connect ("Connection refused" in connectFullMesh). Prefixing by TORCHELASTIC_RESTART_COUNT
    gives every attempt fresh keys. None outside torchrun (env:// as usual).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=not agent_hosts_store and int(os.environ["RANK"]) == 0,
        timeout=timedelta(minutes=10),
    )
    return dist.PrefixStore(f"openrelease-train/attempt_{attempt}", store)


def init_mesh(tp_size: int, *, device: str = "auto") -> Mesh:
    """Initialise torch.distributed (once) and build the (dp, tp) mesh."""
    if "RANK" not in os.environ:  # plain `python -m training train`: a world of one
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        store = _attempt_store()
        device_id = torch_device if use_cuda else None
        if store is None:
            dist.init_process_group(backend, device_id=device_id)
        else:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, device_id=device_id)
    world = dist.get_world_size()
    if world % tp_size:
        raise ValueError(f"--tp {tp_size} does not divide the world size {world}")
    mesh = init_device_mesh(torch_device.type, (world // tp_size, tp_size), mesh_dim_names=("dp", "tp"))
    tp_group = mesh["tp"].get_group()
    dp_group = mesh["dp"].get_group()
    return Mesh(
        device_mesh=mesh,
        device=torch_device,
        rank=dist.get_rank(),
        world_size=world,
        local_rank=local_rank,
        tp=TPGroup(group=tp_group, rank=dist.get_rank(tp_group), world_size=tp_size),
        dp_group=dp_group,
        dp_rank=dist.get_rank(dp_group),
        dp_size=world // tp_size,
    )


def close_mesh() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Mesh", "close_mesh", "init_mesh", "world_size_from_env"]
