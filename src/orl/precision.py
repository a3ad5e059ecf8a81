"""What a stage's precision setting means on a device: real fp32 (no TF32), and the autocast dtype of bf16 / fp16.

fp32 is IEEE fp32: cuDNN's default (and launch.configure_determinism for training) lets Ampere and Hopper GPUs run
fp32 convolutions and matmuls as TF32 (10-bit mantissa), so an fp32 stage runs inside `ieee_fp32()`. bf16 needs
native support (Ampere and newer); on older GPUs (V100, T4) it falls back to fp16, which training pairs with a
GradScaler.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block; the previous flags come back after it."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def native_bf16(device: torch.device) -> bool:
    """True when `device` computes bf16 natively (CPU autocast supports it; on CUDA: compute capability >= 8.0)."""
    if device.type != "cuda":
        return True
    return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_dtype(precision: str, device: torch.device, *, on_cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: plain fp32); bf16 -> fp16 on GPUs without bf16.

    CPU runs fp32 unless on_cpu (bf16 / fp16 CPU kernels are slower than fp32 on most CPUs). The fallback is
    announced on stderr, since fp16 needs loss scaling where bf16 does not.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {sorted(AUTOCAST_DTYPES)}, got {precision!r}")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None or (device.type == "cpu" and not on_cpu):
        return None
    if dtype is torch.bfloat16 and not native_bf16(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        print(f"note: {name} has no native bf16; running fp16 autocast with a GradScaler instead", file=sys.stderr)
        return torch.float16
    return dtype

