"""Reproduces the CUDA JPEG-decode race (pytorch/vision PR 9606) against orl's decode_on_device, old and fixed path.

torchvision's decoder allocates its outputs on the current stream and nvJPEG writes them without waiting for the
work queued there, so it can be handed memory that queued kernels still read. Each iteration: fill `batch` int32
buffers of exactly a decoded image's size with known values and synchronise; queue a ~20 ms kernel and, behind it,
one sum per buffer; free the buffers (their sums still queued); decode a batch of JPEGs; synchronise and compare each
sum with its exact value. A wrong sum means the decoder wrote into a buffer before the queued sum read it. The old
path (decode on the current stream, `ordered=False`) should show corrupted sums on GPUs where nvJPEG races; the
fixed path (orl's default, a side stream) must show none.

    python benchmarks/gpu/decode_race.py              # both paths, a line each
    python benchmarks/gpu/decode_race.py --old-path   # only the old, unsynchronised path
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from PIL import Image

from orl.data.device_decode import decode_on_device

WIDTH, HEIGHT = 640, 480  # one decoded image: 640 * 480 * 3 bytes = 230400 int32 values


def jpeg_batch(n: int) -> list[torch.Tensor]:
    """n baseline RGB JPEGs of WIDTH x HEIGHT as byte tensors (what the workers ship with decode: device)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return out


def corrupted_sums(device: torch.device, ordered: bool, iterations: int = 50, batch: int = 8,
                   sleep_cycles: int = 20_000_000) -> tuple[int, int]:
    """(wrong sums, sums checked) over `iterations` rounds of free-while-queued, decode, check."""
    encoded = jpeg_batch(batch)
    paths = [f"race{i}.jpg" for i in range(batch)]
    numel = WIDTH * HEIGHT * 3 // 4
    decode_on_device(encoded, paths, device, ordered=ordered)  # warm-up: decoder handles, pools
    torch.cuda.synchronize(device)
    wrong = checked = 0
    for it in range(iterations):
        values = [it * batch + i + 1 for i in range(batch)]
        bufs = [torch.full((numel,), v, dtype=torch.int32, device=device) for v in values]
        torch.cuda.synchronize(device)
        torch.cuda._sleep(sleep_cycles)  # keeps the sums below queued while the decode runs
        sums = [b.sum() for b in bufs]
        del bufs  # their blocks go back to the current stream's pool while the sums are still queued
        images = decode_on_device(encoded, paths, device, ordered=ordered)
        torch.cuda.synchronize(device)
        wrong += sum(int(s) != numel * v for s, v in zip(sums, values))
        checked += batch
        del images
    return wrong, checked


def main() -> None:
    """Run the old and/or the fixed path on this machine's GPU and print the counts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-path", action="store_true", help="only the old path (decode on the current stream)")
    p.add_argument("--iterations", type=int, default=50)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("decode_race: needs CUDA")
    dev = torch.device("cuda")
    for ordered in ([False] if args.old_path else [False, True]):
        wrong, checked = corrupted_sums(dev, ordered, args.iterations)
        print(f"{'fixed (side stream)' if ordered else 'old (current stream)'}: {wrong} of {checked} sums corrupted")


if __name__ == "__main__":
    main()
