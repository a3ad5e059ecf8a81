"""Where the device pipeline's images are decoded: in the DataLoader worker (`worker`) or on the training device.

`decode: worker` (the default): the worker decodes and ships the whole image as uint8 (3, H, W): RGB and grayscale
JPEGs with torchvision.io.decode_jpeg (libjpeg-turbo, the same pixels as PIL, about 20 % less CPU: measured on
coco128, tests/test_device_augment.py), every other file with PIL (orl.data.images.open_rgb, every file mode).
`decode: device`: for those JPEGs the worker reads only the file and its header (the size the crops are drawn from)
and ships the encoded bytes; `decode_on_device` decodes them in one batched decode_jpeg call on the training device
(nvJPEG on CUDA, libjpeg-turbo on CPU). Other files are still decoded in the worker, so a batch may mix the two.
Neither applies the EXIF orientation, as open_rgb does not. torchvision 0.29 marks its decoders deprecated in
favour of TorchCodec (a DeprecationWarning, once); they are what this torchvision pins ship, so they are used here.

On CUDA the decode runs on a side stream of its own (`ordered=True`). torchvision's decoder allocates its outputs on
the current stream and nvJPEG writes them without waiting for the work queued there (pytorch/vision PR 9606,
unmerged; TorchCodec PR 1634 fixed the same race), so on the training stream it can be handed memory that the
previous step's queued kernels still read. The side stream's pool only holds earlier decode outputs, each marked
with record_stream for the training stream, so the allocator reuses none of them before the training stream is done
with it; the training stream then waits for the side stream. A JPEG that the decoder rejects but PIL reads
(arithmetic-coded, 12-bit, lossless) is decoded with PIL on the CPU instead, with a warning naming the file.
"""

from __future__ import annotations

import io
import logging
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

log = logging.getLogger(__name__)
_side_streams: dict[torch.device, torch.cuda.Stream] = {}  # one decode stream per GPU, made on first use
_warned: set[str] = set()  # files already reported as decoded by PIL (once per process, not every epoch)


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
        except RuntimeError as e:  # e.g. 12-bit or lossless: PIL below reads it or names the file
            _warn_once(str(path), f"decode_jpeg failed ({e}); decoded with PIL instead")
    img = open_rgb(path, data)  # other files and JPEG modes: PIL, from the bytes already read
    return img, TF.pil_to_tensor(img)


def is_encoded(t: torch.Tensor) -> bool:
    """True for a JPEG's bytes (1-D), False for decoded pixels (3, H, W)."""
    return t.ndim == 1


def decode_on_device(
    encoded: list[torch.Tensor], paths: list[str], device: torch.device | str, *, ordered: bool = True
) -> list[torch.Tensor]:
    """Decode JPEG bytes (CPU tensors) into uint8 (3, H, W) RGB on `device`, batched; ImageReadError names a bad file.

    ordered=False decodes on the current CUDA stream, as torchvision does by itself: racy (see the module docstring),
    kept only so the GPU check can show the race.
    """
    if not encoded:
        return []
    device = torch.device(device)
    if device.type != "cuda" or not ordered:
        return _decode(encoded, paths, device)
    consumer = torch.cuda.current_stream(device)
    side = _side_stream(device)
    with torch.cuda.stream(side):
        out = _decode(encoded, paths, device)
    consumer.wait_stream(side)  # the training stream reads the pixels only after the decode wrote them
    for t in out:
        t.record_stream(consumer)  # not reused by the side stream's pool before the consumer is done with it
    return out


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """This GPU's decode stream (one per device, made once)."""
    key = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if key not in _side_streams:
        _side_streams[key] = torch.cuda.Stream(key)
    return _side_streams[key]


def _decode(encoded: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """Batched decode_jpeg on the current stream; when it fails, file by file, with PIL for files it rejects."""
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out = []
    for data, path in zip(encoded, paths):
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as e:
            out.append(_decode_with_pil(data, path, device, e))
    return out


def _decode_with_pil(data: torch.Tensor, path: str, device: torch.device, error: RuntimeError) -> torch.Tensor:
    """A JPEG the decoder rejected, decoded by PIL on the CPU, copied to `device`; ImageReadError if PIL fails too."""
    try:
        img = open_rgb(path, data.numpy().tobytes())
    except ImageReadError as e:
        raise ImageReadError(f"{path}: cannot decode image on {device} ({error}) nor with PIL ({e.__cause__})") from e
    _warn_once(path, f"decode_jpeg on {device} failed ({error}); decoded with PIL on the CPU instead")
    pixels = TF.pil_to_tensor(img)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    return pixels.to(device, non_blocking=True)


def _warn_once(path: str, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        log.warning("%s: %s", path, message)
