"""MoCo v2 baseline: query encoder vs momentum key encoder, InfoNCE against a queue of past keys."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from orl.data.augment import ViewRecipe
from orl.methods.base import Method, Recipe, frozen_copy, momentum_update
from orl.methods.losses import infonce_loss
from orl.models.backbones import build_backbone, feature_dim, global_pool
from orl.models.heads import MoCoHead
from orl import dist

# MoCo v2 paper / official code (and the authors' COCO config): crop scale 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1)
# p 0.8, grayscale 0.2, blur sigma 0.1-2 p 0.5, flip, no solarize; the same recipe for both views.
MOCO_V2_VIEW = ViewRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2,
                          blur_p=0.5, solarize_p=0.0)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the global batch across ranks (MoCo's Shuffle-BN); return this rank's new slice and the inverse."""
    n = x.shape[0]
    x_all = dist.gather_no_grad(x)
    perm = dist.broadcast(torch.randperm(x_all.shape[0], device=x.device), src=0)  # same permutation everywhere
    r = dist.rank()
    return x_all[perm[r * n : (r + 1) * n]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Undo batch_shuffle: return the rows of this rank's original samples, in their original order."""
    n = x.shape[0]
    x_all = dist.gather_no_grad(x)
    r = dist.rank()
    return x_all[inverse[r * n : (r + 1) * n]]


class MoCoV2(Method):
    """MoCo v2 (Chen et al. 2020) with the ORL supplementary's settings (initial lr 0.3)."""

    name: ClassVar[str] = "moco_v2"
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "base_lr": 0.3, "base_batch": 256, "momentum": 0.9, "weight_decay": 1e-4,
    }
    # Cosine schedule without warmup; per-GPU BN with Shuffle-BN of the key encoder, as the MoCo code.
    recipe: ClassVar[Recipe] = Recipe(views=(MOCO_V2_VIEW, MOCO_V2_VIEW), warmup_epochs=0.0, sync_bn=False)

    def __init__(
        self,
        arch: str = "resnet50",
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        key_momentum: float = 0.999,
        shuffle_bn: bool = True,
    ) -> None:
        super().__init__()
        self.save_hparams(locals())
        if queue_size <= 0:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        self.backbone = build_backbone(arch)
        self.projector = MoCoHead(feature_dim(arch), proj_hidden, proj_dim)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.temperature = temperature
        self.key_momentum = key_momentum
        self.shuffle_bn = shuffle_bn
        # Queue of past keys, one L2-normalised key per row; buffers so they are checkpointed with the model.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # The pointer's host copy: reading the GPU buffer (int(self.queue_ptr)) would sync the GPU every step.
        self._ptr = 0

    def _uses_shuffle(self) -> bool:
        # Shuffle-BN stops the query and its positive key from sharing per-GPU BN statistics. It only has an
        # effect with per-GPU BN across several processes. In one process there is nothing to shuffle across:
        # the key batch is normalised with its own statistics, like the query batch (MoCo's official code has no
        # single-GPU shuffle; OpenSelfSup's MoCo runs only under DDP). Under SyncBN the statistics are global
        # whatever the order, so shuffling would only cost an image all_gather.
        if not (self.shuffle_bn and dist.is_distributed()):
            return False
        return not any(isinstance(m, nn.SyncBatchNorm) for m in self.key_backbone.modules())

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised key projections from the momentum encoder (no gradient)."""
        shuffle = self._uses_shuffle()
        if shuffle:
            x, inverse = batch_shuffle(x)
        k = F.normalize(self.key_projector(global_pool(self.key_backbone(x))), dim=1)
        return batch_unshuffle(k, inverse) if shuffle else k

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Write the keys of the global batch into the queue at queue_ptr, wrapping around its end."""
        keys = dist.gather_no_grad(k).to(self.queue.dtype)
        size, total = self.queue.shape[0], keys.shape[0]
        keys = keys[-size:]  # a batch larger than the queue: only its last `size` keys survive anyway
        ptr = self._ptr
        start = ptr + total - keys.shape[0]
        idx = (start + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys
        self._ptr = (ptr + total) % size
        self.queue_ptr.fill_(self._ptr)  # the buffer goes into checkpoints; filling it from the host does not sync

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        ptr = state_dict.get(prefix + "queue_ptr")
        if ptr is not None:
            self._ptr = int(ptr)  # once per load, from the (CPU) state dict

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Single-direction InfoNCE of MoCo v2: query from view1, positive key from view2, negatives from the queue."""
        q = F.normalize(self.embed(batch["view1"]), dim=1)
        k = self.keys(batch["view2"])
        # clone: the loss saves the queue for backward, and enqueue modifies it in place just below.
        loss = infonce_loss(q, k, self.queue.clone(), self.temperature)
        if self.training:
            self.enqueue(k)
        return {"loss": loss, "loss_infonce": loss}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Key encoder <- m key + (1 - m) query encoder, constant m = key_momentum, over parameters only."""
        momentum_update(self.key_backbone, self.backbone, self.key_momentum)
        momentum_update(self.key_projector, self.projector, self.key_momentum)
