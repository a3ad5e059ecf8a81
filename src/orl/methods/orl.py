"""ORL (stage 3): BYOL on the global pair plus an intra-RoI and an inter-RoI pair, each with its own predictor."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from orl.methods.byol import BYOL
from orl.models.heads import MLP

# Loss term -> the two batch keys of its pair (first RoI: view-1 recipe, second: view-2 recipe).
PAIRS: dict[str, tuple[str, str]] = {"global": ("view1", "view2"), "intra": ("intra1", "intra2"),
                                     "inter": ("inter1", "inter2")}


class ORL(BYOL):
    """ORL as specified in ORL_SPEC section 3, built on BYOL.

    Shared online backbone + projector and ONE EMA target (BYOL's, with its momentum schedule); three predictors:
    BYOL's `predictor` serves the global pair, `intra_predictor` and `inter_predictor` the RoI pairs. Each pair
    gives a summed symmetric BYOL loss; loss = w_global L_global + w_intra L_intra + w_inter L_inter. Starts from
    random init (stage-1 weights are only used for mining). The optimiser is BYOL's (inherited default_optim).
    """

    name: ClassVar[str] = "orl"

    def __init__(
        self,
        arch: str = "resnet50",
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        base_momentum: float = 0.99,
        w_global: float = 1.0,
        w_intra: float = 1.0,
        w_inter: float = 1.0,
    ) -> None:
        super().__init__(arch, proj_hidden, proj_dim, pred_hidden, base_momentum)
        self.save_hparams(locals())
        self.intra_predictor = MLP(proj_dim, pred_hidden, proj_dim)
        self.inter_predictor = MLP(proj_dim, pred_hidden, proj_dim)
        self.weights = {"global": float(w_global), "intra": float(w_intra), "inter": float(w_inter)}

    @property
    def global_predictor(self) -> nn.Module:
        """BYOL's predictor, used for the global pair (a property, so state_dict keys are not duplicated)."""
        return self.predictor

    def predictor_for(self, term: str) -> nn.Module:
        """The predictor of 'global', 'intra' or 'inter'."""
        return {"global": self.predictor, "intra": self.intra_predictor, "inter": self.inter_predictor}[term]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted sum of the three symmetric BYOL losses; the per-term values are logged unweighted."""
        missing = [k for pair in PAIRS.values() for k in pair if k not in batch]
        if missing:
            raise KeyError(f"ORL batches need {missing}: train on the ORL dataset (orl pretrain --method orl "
                           "--correspondence mining/correspondence.h5), not the two-view one")
        out: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for term, (a, b) in PAIRS.items():
            # Each term is computed even at weight 0: its predictor then still takes part in the graph, which
            # DDP (without find_unused_parameters) requires.
            l12, l21 = self.pair_losses(batch[a], batch[b], self.predictor_for(term))
            loss = l12 + l21
            out[f"loss_{term}"], out[f"loss_{term}_12"], out[f"loss_{term}_21"] = loss, l12, l21
            weighted = self.weights[term] * loss
            total = weighted if total is None else total + weighted
        return {"loss": total, **out}

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

