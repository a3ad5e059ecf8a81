"""Where the device pipeline's images are decoded: in the DataLoader worker (`worker`) or on the training device.

`decode: worker` (the default): the worker decodes and ships the whole image as uint8 (3, H, W): RGB and grayscale
JPEGs with torchvision.io.decode_jpeg (libjpeg-turbo, the same pixels as PIL, about 20 % less CPU: measured on
coco128, tests/test_device_augment.py), every other file with PIL (orl.data.images.open_rgb, every file mode).
`decode: device`: for those JPEGs the worker reads only the file and its header (the size the crops are drawn from)
and ships the encoded bytes; `decode_on_device` decodes them in one batched decode_jpeg call on the training device
(nvJPEG on CUDA, libjpeg-turbo on CPU). Other files are still decoded in the worker, so a batch may mix the two.
Neither applies the EXIF orientation, as open_rgb does not. torchvision 0.29 marks its decoders deprecated in
favour of TorchCodec (a DeprecationWarning, once); they are what this torchvision pins ship, so they are used here.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from orl.data.images import ImageReadError, open_rgb

DECODERS = ("worker", "device")
JPEG_MAGIC = b"\xff\xd8"
JPEG_MODES = ("RGB", "L")  # what decode_jpeg turns into RGB exactly as PIL's convert("RGB") does


def check_decode(decode: str) -> str:
    """The decoder name, or ValueError."""
    if decode not in DECODERS:
        raise ValueError(f"decode must be {' or '.join(DECODERS)}, got {decode!r}")
    return decode


def load_source(path: str | os.PathLike, decode: str = "worker") -> tuple[Image.Image, torch.Tensor]:
    """(image to draw the crops from, what the worker ships): decoded uint8 (3, H, W), or a JPEG's bytes (L,).

    With decode="device" the returned PIL image is opened lazily: only its header (size, mode) has been read.
    """
    path = Path(path)
    check_decode(decode)
    try:
        data = path.read_bytes()
        img = Image.open(io.BytesIO(data)) if data.startswith(JPEG_MAGIC) else None  # header only
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot read image header ({e})") from e
    if img is not None and img.format == "JPEG" and img.mode in JPEG_MODES:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if decode == "device":
            return img, encoded
        try:
            return img, decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ImageReadError(f"{path}: cannot decode image ({e})") from e
    img = open_rgb(path, data)  # other files and JPEG modes: PIL, from the bytes already read
    return img, TF.pil_to_tensor(img)


def is_encoded(t: torch.Tensor) -> bool:
    """True for a JPEG's bytes (1-D), False for decoded pixels (3, H, W)."""
    return t.ndim == 1


def decode_on_device(encoded: list[torch.Tensor], paths: list[str], device: torch.device | str) -> list[torch.Tensor]:
    """Decode JPEG bytes (CPU tensors) into uint8 (3, H, W) RGB on `device`, batched; ImageReadError names a bad file."""
    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    # One file spoilt the batch: decode one by one to name it.
    out = []
    for data, path in zip(encoded, paths):
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as e:
            raise ImageReadError(f"{path}: cannot decode image on {device} ({e})") from e
    return out
