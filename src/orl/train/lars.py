"""LARS optimiser as in SimCLR (You et al. 2017): layer-wise trust ratio, biases and BN parameters excluded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum whose per-tensor lr is scaled by trust_coefficient * ||w|| / ||g + wd w|| (SimCLR's LARS).

    Tensors with ndim <= 1 (biases, BN gamma/beta) get neither weight decay nor the trust ratio when
    exclude_bias_and_bn is True, as in SimCLR. A param group may override any option, e.g. set
    exclude_bias_and_bn per group.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        exclude_bias_and_bn: bool = True,
        nesterov: bool = False,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS: lr, momentum and weight_decay must be >= 0 and trust_coefficient > 0")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            exclude_bias_and_bn=exclude_bias_and_bn, nesterov=nesterov,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One optimisation step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                excluded = group["exclude_bias_and_bn"] and p.ndim <= 1
                if not excluded and group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                scaled_lr = lr
                if not excluded:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    # SimCLR: trust ratio eta ||w|| / ||g||, falling back to 1 when either norm is 0.
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    scaled_lr = lr * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                # Momentum on the lr-scaled update (SimCLR's "classic momentum"): v <- m v + lr_scaled * g.
                buf.mul_(mom).add_(g * scaled_lr)
                update = buf.mul(mom).add(g * scaled_lr) if group["nesterov"] else buf
                p.sub_(update)
        return loss
