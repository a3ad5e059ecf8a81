"""One DDP training step of orl's BYOL on every rank, wrapped as orl's trainer wraps it (run under torchrun by the GPU
check's `ddp` part, benchmarks/gpu/gpu_check.py).

Backend: NCCL when there is a GPU per rank; two ranks on one GPU use gloo (NCCL refuses two ranks on one device),
on CPU gloo too. On CUDA the BatchNorms become SyncBatchNorm (trainer: `--sync-bn` on GPUs); SyncBatchNorm runs on
GPUs only, so on CPU the step uses per-rank BatchNorm. Each rank feeds different random images; rank 0 writes what
the ranks agree on to --out: parameters after the step (DDP's gradient all-reduce) and BN running means (equal across
ranks only when SyncBatchNorm pooled the statistics).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from orl.methods import build_method


def _same_on_every_rank(t: torch.Tensor) -> bool:
    """True when `t` (the same shape on every rank) is identical everywhere."""
    gathered = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
    tdist.all_gather(gathered, t)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def main() -> None:
    """Join the group, run one step, check it, write the JSON (rank 0)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=4, help="images per rank")
    p.add_argument("--heads", default="{}", help="JSON of build_method's head sizes")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device("cuda", rank % gpus) if gpus else torch.device("cpu")
    if gpus:
        torch.cuda.set_device(dev)  # before NCCL creates its communicator on the current device
    tdist.init_process_group("nccl" if gpus >= world else "gloo")  # gloo: CPU, or more ranks than GPUs
    torch.manual_seed(0)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    method = build_method("byol", arch=args.arch, **json.loads(args.heads))
    if gpus:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    sync_bn = sum(isinstance(m, nn.SyncBatchNorm) for m in method.modules())
    method.to(dev)
    model = DDP(method, device_ids=[dev.index] if gpus else None, broadcast_buffers=False)  # as orl's trainer
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # different images on every rank
    shape = (args.batch, 3, args.size, args.size)
    batch = {k: (torch.randn(shape, generator=g) * (1 + rank)).to(dev) for k in ("view1", "view2")}
    loss = model(batch)["loss"]
    loss.backward()
    opt.step()
    params = torch.cat([q.detach().flatten() for q in method.parameters() if q.requires_grad])
    first_bn = next(m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    result = {"world_size": world, "backend": tdist.get_backend(), "gpus": gpus, "device": str(dev),
              "sync_bn_modules": sync_bn, "loss": round(float(loss.detach()), 4),
              "params_equal_after_step": _same_on_every_rank(params),
              "bn_running_mean_equal": _same_on_every_rank(first_bn.running_mean.detach().clone())}
    if rank == 0:
        args.out.write_text(json.dumps(result))
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
