"""Distributed helpers on 2 CPU processes (gloo): gathers, NT-Xent gradients under DDP, MoCo shuffle and queue."""

import torch
import torch.distributed as tdist
import torch.nn.functional as F
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from orl.methods.losses import infonce_loss, nt_xent_loss
from orl.methods.moco_v2 import MoCoV2, batch_shuffle, batch_unshuffle
from orl import dist
from orl.models.backbones import global_pool

WORLD = 2


def _worker(rank: int, init_file: str, x1, x2, weight, expected_loss, expected_grad) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert dist.is_distributed() and dist.rank() == rank and dist.world_size() == WORLD
        g = dist.gather_no_grad(torch.full((2, 3), float(rank)))
        assert torch.equal(g, torch.tensor([0.0, 0.0, 1.0, 1.0])[:, None].expand(4, 3))

        # NT-Xent over the global batch: DDP-averaged gradients equal the single-process gradient.
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(weight)
        model = DDP(lin)
        n = x1.shape[0] // WORLD
        sl = slice(rank * n, (rank + 1) * n)
        z1, z2 = model(torch.cat([x1[sl], x2[sl]])).split([n, n])
        loss = nt_xent_loss(z1, z2, 0.1)
        loss.backward()
        mean_loss = loss.detach().clone()
        tdist.all_reduce(mean_loss)
        assert torch.allclose(mean_loss / WORLD, expected_loss, atol=1e-5)
        assert torch.allclose(lin.weight.grad, expected_grad, atol=1e-5)

        # Shuffle-BN helpers: a global permutation that unshuffles back to the original rows.
        x = torch.arange(3, dtype=torch.float32)[:, None] + 3 * rank
        shuffled, inverse = batch_shuffle(x)
        assert sorted(dist.gather_no_grad(shuffled).flatten().tolist()) == list(range(6))
        assert torch.equal(batch_unshuffle(shuffled, inverse), x)

        # MoCo queue: every rank enqueues the same gathered keys.
        torch.manual_seed(0)
        m = MoCoV2(arch="resnet18", proj_hidden=8, proj_dim=4, queue_size=5)
        k = torch.full((2, 4), float(rank + 1))
        m.enqueue(k)
        m.enqueue(k)
        assert int(m.queue_ptr) == 3
        # Gathered keys [1, 1, 2, 2] go to slots 0..3, then to slots 4, 0, 1, 2 (wrapped).
        assert torch.equal(m.queue, torch.tensor([1.0, 2.0, 2.0, 2.0, 1.0])[:, None].expand(5, 4))
    finally:
        tdist.destroy_process_group()


def test_distributed_helpers_two_processes(tmp_path):
    torch.manual_seed(0)
    x1, x2, weight = torch.randn(6, 5), torch.randn(6, 5), torch.randn(4, 5)
    lin = nn.Linear(5, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    z1, z2 = lin(torch.cat([x1, x2])).split([6, 6])
    loss = nt_xent_loss(z1, z2, 0.1)  # single process: the reference
    loss.backward()
    mp.spawn(
        _worker,
        args=(str(tmp_path / "store"), x1, x2, weight, loss.detach(), lin.weight.grad.clone()),
        nprocs=WORLD,
        join=True,
    )


def test_helpers_are_identity_without_process_group():
    t = torch.randn(3, 2, requires_grad=True)
    assert not dist.is_distributed() and dist.rank() == 0 and dist.world_size() == 1
    assert dist.gather_with_grad(t) is t and dist.gather_no_grad(t) is t and dist.broadcast(t) is t
    x, inverse = batch_shuffle(torch.arange(4.0))
    assert sorted(x.tolist()) == [0, 1, 2, 3] and torch.equal(batch_unshuffle(x, inverse), torch.arange(4.0))


# ---------------------------------------------------------------------------------------------- Shuffle-BN
SHUFFLE_SEED = 3
TINY_MOCO = dict(arch="resnet18", proj_hidden=8, proj_dim=4, queue_size=16)


def _tiny_moco() -> MoCoV2:
    torch.manual_seed(0)
    return MoCoV2(**TINY_MOCO).train()


def _shuffle_worker(rank: int, init_file: str, x1, x2, expected_keys, expected_loss) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        m = _tiny_moco()
        assert m._uses_shuffle(), "per-process BN under DDP must shuffle the key batch"
        n = x1.shape[0] // WORLD
        sl = slice(rank * n, (rank + 1) * n)
        torch.manual_seed(SHUFFLE_SEED)  # rank 0's permutation is the one broadcast
        with torch.no_grad():
            out = m({"view1": x1[sl], "view2": x2[sl]})
        torch.manual_seed(SHUFFLE_SEED)
        keys = m.keys(x2[sl])
        torch.testing.assert_close(keys, expected_keys[sl], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["loss"], expected_loss[rank], atol=1e-5, rtol=0)
    finally:
        tdist.destroy_process_group()


def _per_rank_keys(m: MoCoV2, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Keys of x when rank r's key encoder sees x[order[r n : (r + 1) n]] (its own BN statistics), in x's order."""
    n = x.shape[0] // WORLD
    with torch.no_grad():
        shuffled = torch.cat([m.key_projector(global_pool(m.key_backbone(x[order[r * n:(r + 1) * n]])))
                              for r in range(WORLD)])
    return F.normalize(shuffled, dim=1)[torch.argsort(order)]


def test_shuffle_bn_on_two_processes_equals_the_single_process_reference(tmp_path):
    # Invariant: under DDP with per-process BN, the key of image j is what a key encoder gives it inside the
    # sub-batch the global permutation sent it to; the loss is then each rank's InfoNCE with those keys.
    torch.manual_seed(1)
    x1, x2 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    torch.manual_seed(SHUFFLE_SEED)
    perm = torch.randperm(6)
    assert set(perm[:3].tolist()) != {0, 1, 2}, "the permutation must move images across ranks"
    m = _tiny_moco()
    keys = _per_rank_keys(m, x2, perm)
    unshuffled = _per_rank_keys(m, x2, torch.arange(6))
    n, losses, plain = 3, [], []
    with torch.no_grad():
        for r in range(WORLD):
            q = F.normalize(m.embed(x1[r * n:(r + 1) * n]), dim=1)
            losses.append(infonce_loss(q, keys[r * n:(r + 1) * n], m.queue, m.temperature))
            plain.append(infonce_loss(q, unshuffled[r * n:(r + 1) * n], m.queue, m.temperature))
    assert (keys - unshuffled).abs().max() > 1e-3, "shuffling must change the keys' BN statistics"
    assert abs(losses[0] - plain[0]) > 1e-4
    mp.spawn(_shuffle_worker, args=(str(tmp_path / "store"), x1, x2, keys, torch.stack(losses)), nprocs=WORLD,
             join=True)


def test_single_process_moco_does_not_shuffle():
    m = _tiny_moco()
    assert not m._uses_shuffle()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = F.normalize(m.key_projector(global_pool(m.key_backbone(x))), dim=1)
    torch.testing.assert_close(m.keys(x), reference)
