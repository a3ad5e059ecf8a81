"""Mask R-CNN with a ResNet-FPN backbone initialised from an exported backbone (torchvision ResNet names, no fc).

Follows the paper's Detectron2 fine-tuning setup where torchvision's defaults differ: every backbone stage trains
(FREEZE_AT 0, i.e. trainable_layers=5) and BatchNorm is live in the ResNet and the FPN (NORM "SyncBN") instead of
torchvision's FrozenBatchNorm2d. As MoCo argued for this protocol, self-supervised features are distributed
differently from supervised ImageNet ones, so frozen BN (fine for supervised weights) would handicap them; with 2
images per GPU, per-GPU BN would be too noisy, hence SyncBN over the 8 GPUs (see `to_sync_bn`). `freeze_at`
(Detectron2's FREEZE_AT, frozen BN included) exists for cheaper probes only; the paper's value is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

# torchvision's (= the pretraining pipeline's) RGB normalisation, on [0, 1] pixels.
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
ARCHS = ("resnet101", "resnet152", "resnet18", "resnet34", "resnet50")  # the --arch choices
# Detectron2's FREEZE_AT: stages 1..k are frozen (1 = stem, 2..5 = layer1..layer4); the paper uses 0.
_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def build_resnet(arch: str, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """torchvision ResNet with live nn.BatchNorm2d, loaded from `state` (only fc.* may be missing); None = random."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")
    net = getattr(torchvision.models, arch)(weights=None, norm_layer=nn.BatchNorm2d)
    if state is not None:
        try:
            result = net.load_state_dict(dict(state), strict=False)
        except RuntimeError as e:  # shape mismatches raise even with strict=False
            raise ValueError(f"weights do not fit {arch}: {str(e).splitlines()[1].strip()} ...") from None
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights do not fit {arch}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    return net


def _frozen_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside `module` by a FrozenBatchNorm2d with the same statistics and affine."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _frozen_bn(child))
    return module


def freeze_stages(resnet: nn.Module, freeze_at: int) -> None:
    """Freeze the first `freeze_at` stages (weights and BN statistics), as Detectron2's FREEZE_AT does."""
    if not 0 <= freeze_at <= len(_STAGES):
        raise ValueError(f"freeze_at must be in 0..{len(_STAGES)}, got {freeze_at}")
    for names in _STAGES[:freeze_at]:
        for name in names:
            stage = _frozen_bn(getattr(resnet, name))
            setattr(resnet, name, stage)
            for p in stage.parameters():
                p.requires_grad_(False)


class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's resize/normalise/batch step with separate train and test sizes, switched by train()/eval().

    In training the short side is drawn uniformly from `train_min_sizes` (Detectron2's "choice" sampling), at test
    time it is `test_min_size`; the long side is capped at the matching max size.
    """

    def __init__(self, train_min_sizes: Sequence[int], train_max_size: int, test_min_size: int,
                 test_max_size: int) -> None:
        super().__init__(min_size=tuple(train_min_sizes), max_size=train_max_size, image_mean=IMAGE_MEAN,
                         image_std=IMAGE_STD)
        self._sizes = {True: (tuple(train_min_sizes), train_max_size), False: ((test_min_size,), test_max_size)}

    def train(self, mode: bool = True) -> MultiScaleTransform:
        """Switch to the train or the test sizes along with the module mode."""
        self.min_size, self.max_size = self._sizes[bool(mode)]
        return super().train(mode)


@dataclass(frozen=True)
class HeadSizes:
    """Widths of everything above the ResNet; the defaults are Detectron2's R50-FPN (smaller ones: CPU demo only)."""

    fpn_channels: int = 256  # FPN outputs, RPN conv, the 4 mask-head convs and its deconv
    box_head_dim: int = 1024  # the two fully connected layers of the box head
    roi_batch_size: int = 512  # sampled RoIs per image in training (25 % positives)
    test_proposals: int = 1000  # RPN proposals per FPN level before NMS and per image after it, at test time
    detections_per_image: int = 100  # COCO AP counts at most 100 detections per image


def build_mask_rcnn(arch: str, num_classes: int, state: Mapping[str, torch.Tensor] | None, *,
                    train_min_sizes: Sequence[int], train_max_size: int, test_min_size: int, test_max_size: int,
                    heads: HeadSizes = HeadSizes(), freeze_at: int = 0) -> MaskRCNN:
    """Mask R-CNN ResNet-FPN (num_classes without background), backbone from `state`.

    freeze_at 0 (the paper: every layer trains, torchvision's trainable_layers=5) or k = stages 1..k frozen.
    """
    body = build_resnet(arch, state)
    c5 = body.fc.in_features  # 512 (BasicBlock) or 2048 (Bottleneck)
    freeze_stages(body, freeze_at)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[c5 // 8, c5 // 4, c5 // 2, c5],
        out_channels=heads.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=nn.BatchNorm2d,  # Detectron2 FPN.NORM "SyncBN": norm after every FPN conv, convs without bias
    )
    ch, classes = heads.fpn_channels, num_classes + 1
    model = MaskRCNN(
        backbone,
        # Detectron2's Base-RCNN-FPN keeps 1000 proposals per image in training (torchvision's default is 2000).
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=heads.test_proposals,
        rpn_post_nms_top_n_test=heads.test_proposals,
        box_batch_size_per_image=heads.roi_batch_size,
        box_detections_per_img=heads.detections_per_image,
        box_head=TwoMLPHead(ch * 7 * 7, heads.box_head_dim),  # RoIAlign 7x7 -> fc -> fc, as torchvision's default
        box_predictor=FastRCNNPredictor(heads.box_head_dim, classes),
        mask_head=MaskRCNNHeads(ch, [ch] * 4, 1),  # 4 x conv3x3 on RoIAlign 14x14
        mask_predictor=MaskRCNNPredictor(ch, ch, classes),
    )
    model.transform = MultiScaleTransform(train_min_sizes, train_max_size, test_min_size, test_max_size)
    return model


def to_sync_bn(model: nn.Module) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (for DDP on GPUs: statistics over the global batch of 16, not 2 per GPU)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def norm_parameters(model: nn.Module) -> set[int]:
    """ids of the affine parameters of every BatchNorm layer (Detectron2 applies no weight decay to them)."""
    ids = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm):
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids
