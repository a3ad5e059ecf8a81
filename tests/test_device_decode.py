"""decode_on_device: the per-file PIL fallback for JPEGs the decoder rejects, and the CUDA side-stream ordering."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from orl.data import device_decode
from orl.data.images import ImageReadError, open_rgb


def _jpegs(tmp_path: Path, n: int = 3) -> list[Path]:
    paths = []
    for i in range(n):
        img = Image.radial_gradient("L").resize((24 + 8 * i, 20)).convert("RGB")
        paths.append(tmp_path / f"img{i}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def _rejecting(bad: bytes):
    """decode_jpeg that fails (as nvJPEG on a 12-bit or arithmetic-coded file) on a batch holding `bad`."""
    real = device_decode.decode_jpeg

    def fake(data, *args, **kwargs):
        items = data if isinstance(data, list) else [data]
        if any(t.numpy().tobytes() == bad for t in items):
            raise RuntimeError("nvjpegDecode failed: unsupported JPEG")
        return real(data, *args, **{k: v for k, v in kwargs.items() if k != "device"})

    return fake


def test_a_file_the_decoder_rejects_is_decoded_by_pil(tmp_path: Path, monkeypatch, caplog) -> None:
    paths = _jpegs(tmp_path)
    encoded = [device_decode.load_source(p, "device")[1] for p in paths]
    monkeypatch.setattr(device_decode, "decode_jpeg", _rejecting(paths[1].read_bytes()))
    monkeypatch.setattr(device_decode, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=device_decode.__name__):
        out = device_decode.decode_on_device(encoded, [str(p) for p in paths], "cpu")
    assert [tuple(t.shape) for t in out] == [(3, 20, 24), (3, 20, 32), (3, 20, 40)]
    for t, p in zip(out, paths):
        assert torch.equal(t, TF.pil_to_tensor(open_rgb(p))), p.name  # libjpeg-turbo and PIL agree exactly
    named = [r.getMessage() for r in caplog.records if str(paths[1]) in r.getMessage()]
    assert len(named) == 1 and "PIL" in named[0]
    assert not any(str(paths[0]) in r.getMessage() for r in caplog.records)


def test_a_file_neither_decoder_reads_is_named(tmp_path: Path, monkeypatch) -> None:
    paths = _jpegs(tmp_path, 2)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    encoded = [device_decode.load_source(p, "device")[1] for p in paths]
    with pytest.raises(ImageReadError, match="img1.jpg.*nor with PIL"):
        device_decode.decode_on_device(encoded, [str(p) for p in paths], "cpu")


def test_the_worker_decode_falls_back_to_pil(tmp_path: Path, monkeypatch) -> None:
    path = _jpegs(tmp_path, 1)[0]
    monkeypatch.setattr(device_decode, "decode_jpeg", _rejecting(path.read_bytes()))
    _, pixels = device_decode.load_source(path, "worker")
    assert torch.equal(pixels, TF.pil_to_tensor(open_rgb(path)))


class _FakeStream:
    """Stands in for torch.cuda.Stream on a machine without CUDA; records what is asked of it."""

    def __init__(self, name: str, events: list) -> None:
        self.name, self.events = name, events

    def wait_stream(self, other: "_FakeStream") -> None:
        self.events.append(("wait", self.name, other.name))


@pytest.mark.parametrize("ordered", [True, False])
def test_cuda_decode_runs_on_a_side_stream_the_consumer_waits_for(tmp_path: Path, monkeypatch, ordered: bool) -> None:
    events: list = []
    current = [_FakeStream("main", events)]
    side = _FakeStream("side", events)

    class _Switch:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            current.insert(0, self.stream)

        def __exit__(self, *exc):
            current.pop(0)

    real = device_decode.decode_jpeg

    def fake_decode(data, *args, device=None, **kwargs):
        events.append(("decode", current[0].name, str(device)))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "stream", _Switch)
    monkeypatch.setattr(device_decode, "_side_stream", lambda device: side)
    monkeypatch.setattr(device_decode, "decode_jpeg", fake_decode)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: events.append(("record", s.name)), raising=False)
    paths = _jpegs(tmp_path, 2)
    encoded = [device_decode.load_source(p, "device")[1] for p in paths]
    out = device_decode.decode_on_device(encoded, [str(p) for p in paths], "cuda", ordered=ordered)
    assert len(out) == 2
    if ordered:
        assert events == [("decode", "side", "cuda"), ("wait", "main", "side"), ("record", "main"), ("record", "main")]
    else:
        assert events == [("decode", "main", "cuda")]
