"""BYOL, MoCo v2 and SimCLR behind the Method interface, on ResNet-18 at 32 px."""

import inspect

import pytest
import torch
from torch import nn

from orl.methods import BYOL, METHODS, ORL, Method, MoCoV2, SimCLR, build_method
from orl.methods.base import momentum_update

TINY = {
    "byol": dict(arch="resnet18", proj_hidden=32, proj_dim=16, pred_hidden=32),
    "moco_v2": dict(arch="resnet18", proj_hidden=32, proj_dim=16, queue_size=10),
    "simclr": dict(arch="resnet18", proj_hidden=32, proj_dim=16),
}
TERMS = {"byol": {"loss_12", "loss_21"}, "moco_v2": {"loss_infonce"}, "simclr": {"loss_ntxent"}}


def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"view1": torch.randn(n, 3, 32, 32, generator=g), "view2": torch.randn(n, 3, 32, 32, generator=g)}


def _frozen(m: Method) -> list[nn.Module]:
    if isinstance(m, BYOL):
        return [m.target_backbone, m.target_projector]
    if isinstance(m, MoCoV2):
        return [m.key_backbone, m.key_projector]
    return []


@pytest.fixture(params=sorted(TINY))
def method(request) -> Method:
    torch.manual_seed(0)
    return build_method(request.param, **TINY[request.param])


def test_forward_backward(method: Method):
    out = method(_batch())
    assert set(out) == {"loss"} | TERMS[method.name]
    for v in out.values():
        assert v.ndim == 0 and torch.isfinite(v)
    out["loss"].backward()
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    assert all(p.grad is not None for p in online)
    # The target / key network gets no gradients at all.
    for mod in _frozen(method):
        assert all(not p.requires_grad and p.grad is None for p in mod.parameters())


def test_byol_total_is_sum_of_directions():
    torch.manual_seed(0)
    m = BYOL(**TINY["byol"])
    out = m(_batch())
    assert out["loss"].item() == pytest.approx(out["loss_12"].item() + out["loss_21"].item())
    assert 0.0 <= out["loss"].item() <= 8.0
    assert all(p.grad is None for p in m.predictor.parameters())  # nothing ran backward yet
    out["loss"].backward()
    assert all(p.grad is not None for p in m.predictor.parameters())


def _perturb_online(m: Method) -> None:
    with torch.no_grad():
        for p in list(m.backbone.parameters()) + list(m.projector.parameters()):
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize(
    "name,step,total,momentum",
    [("byol", 0, 100, 0.99), ("byol", 50, 100, 0.995), ("byol", 100, 100, 1.0), ("moco_v2", 7, 100, 0.999)],
)
def test_after_step_updates_params_only_with_right_momentum(name, step, total, momentum):
    torch.manual_seed(0)
    m = build_method(name, **TINY[name])
    m(_batch())  # updates BN running stats of both networks (train mode)
    _perturb_online(m)
    online = [m.backbone, m.projector]
    frozen = _frozen(m)
    before_t = [{k: v.clone() for k, v in f.state_dict().items()} for f in frozen]
    before_o = [{k: v.clone() for k, v in o.state_dict().items()} for o in online]
    m.after_step(step, total)
    for f, o, bt, bo in zip(frozen, online, before_t, before_o):
        params = dict(f.named_parameters())
        for k, v in f.state_dict().items():
            if k in params:
                assert torch.allclose(v, momentum * bt[k] + (1 - momentum) * bo[k], atol=1e-6), k
            else:  # BN buffers are not averaged
                assert torch.equal(v, bt[k]), k
        for k, v in o.state_dict().items():  # the online network is untouched
            assert torch.equal(v, bo[k]), k


def test_byol_target_runs_in_train_mode_and_keeps_own_bn_stats():
    torch.manual_seed(0)
    m = BYOL(**TINY["byol"])
    rm = m.target_backbone.bn1.running_mean.clone()
    m(_batch())
    assert not torch.equal(m.target_backbone.bn1.running_mean, rm)  # target BN used batch stats (train mode)


def test_momentum_update_rejects_mismatched_modules():
    with pytest.raises(ValueError):
        momentum_update(nn.Linear(2, 2), nn.Linear(2, 3, bias=False), 0.9)


def test_moco_queue_advances_and_wraps():
    torch.manual_seed(0)
    m = MoCoV2(**TINY["moco_v2"])  # queue of 10, batches of 4
    assert m.queue.shape == (10, 16)
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(10))
    keys = []
    for i, ptr in enumerate([4, 8, 2]):
        b = _batch(4, seed=i)
        keys.append(m.keys(b["view2"]))  # train-mode BN: same keys as inside forward
        m(b)
        assert int(m.queue_ptr) == ptr
    assert torch.allclose(m.queue[2:4], keys[0][2:4], atol=1e-6)  # slots 0..1 of batch 1 were overwritten
    assert torch.allclose(m.queue[4:8], keys[1], atol=1e-6)
    assert torch.allclose(m.queue[8:10], keys[2][:2], atol=1e-6)
    assert torch.allclose(m.queue[0:2], keys[2][2:], atol=1e-6)


def test_moco_batch_larger_than_queue_and_eval_mode():
    torch.manual_seed(0)
    m = MoCoV2(**{**TINY["moco_v2"], "queue_size": 3})
    b = _batch(4)
    k = m.keys(b["view2"])
    m(b)
    # 4 keys into 3 slots from ptr 0: key j goes to slot j % 3, the last write wins.
    assert int(m.queue_ptr) == 1
    assert torch.allclose(m.queue[[1, 2, 0]], k[1:], atol=1e-6)
    m.eval()
    q = m.queue.clone()
    with torch.no_grad():
        m(_batch(4, seed=5))
    assert torch.equal(m.queue, q) and int(m.queue_ptr) == 1  # evaluation does not enqueue


def test_online_backbone_is_not_the_target(method: Method):
    assert method.online_backbone() is method.backbone
    for f in _frozen(method):
        assert method.online_backbone() is not f
    _perturb_online(method)
    x = torch.randn(2, 3, 32, 32)
    method.eval()
    with torch.no_grad():
        feats = method.online_backbone()(x)
        assert torch.equal(feats, method.backbone(x))
        for f in _frozen(method)[:1]:  # the EMA / key backbone now computes something else
            assert not torch.allclose(feats, f(x))


def test_embed_and_hparams_round_trip(method: Method):
    method.eval()
    with torch.no_grad():
        z = method.embed(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 16)
    hp = method.hparams()
    assert hp == {**_defaults(type(method)), **TINY[method.name]}
    rebuilt = build_method(method.name, **hp)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in method.state_dict().items()}


def _defaults(cls: type) -> dict:
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}


def test_registry():
    assert METHODS == {"byol": BYOL, "moco_v2": MoCoV2, "orl": ORL, "simclr": SimCLR}
    with pytest.raises(ValueError, match="byol, moco_v2, orl, simclr"):
        build_method("swav")


def test_default_optim():
    byol = {"name": "sgd", "base_lr": 0.4, "base_batch": 512, "momentum": 0.9, "weight_decay": 1e-4}
    assert BYOL.default_optim == byol
    assert MoCoV2.default_optim["base_lr"] == 0.3 and MoCoV2.default_optim["base_batch"] == 256
    assert SimCLR.default_optim["name"] == "lars" and SimCLR.default_optim["weight_decay"] == 1e-6
