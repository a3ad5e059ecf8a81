"""Corrupt or non-finite weights are refused with the file's name; resume falls back to the last good checkpoint."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_BYOL_ARGS

from orl import checkpoint as ckpt
from orl.methods import build_method
from orl.methods.pretrained import load_pretrained


def _flip_bit(path: Path, member_suffix: str = "data/0") -> None:
    """Flip one bit inside a tensor's bytes of a torch.save zip (what a bad disk or copy does)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x40  # an exponent bit of some float
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return ckpt.save_final(tmp_path_factory.mktemp("model") / "model.pt", build_method("byol", **TINY_BYOL_ARGS))


def test_a_flipped_bit_in_model_pt_is_refused_with_the_file_name(model_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(model_file.read_bytes())
    _flip_bit(bad)
    with pytest.raises(ckpt.CorruptWeightsError, match=r"model\.pt: corrupt file: .* fails its CRC-32 check"):
        load_pretrained(bad)
    load_pretrained(model_file)  # the intact copy loads


def test_non_finite_weights_are_refused_by_features_and_export(model_file: Path, tmp_path: Path) -> None:
    state = torch.load(model_file, weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][key][0] = float("nan")
    nan_model = tmp_path / "nan" / "model.pt"
    nan_model.parent.mkdir()
    torch.save(state, nan_model)  # CRCs intact: the weights themselves are bad
    with pytest.raises(ckpt.CorruptWeightsError, match=r"nan/model\.pt: 1 weight tensor\(s\) hold NaN or inf"):
        load_pretrained(nan_model)
    from orl import cli

    code = cli.main(["export", "--model", str(nan_model), "--out-dir", str(tmp_path / "export")])
    assert code == 1 and not (tmp_path / "export" / "backbone.pth").exists()


def test_resume_skips_a_corrupt_checkpoint_for_the_previous_good_one(model_file: Path, tmp_path: Path) -> None:
    weights = torch.load(model_file, weights_only=True)["state_dict"]
    state = {k: 0 for k in ckpt.CHECKPOINT_KEYS} | {"model": weights}
    older, newer = ckpt.checkpoint_path(tmp_path, 4), ckpt.checkpoint_path(tmp_path, 8)
    ckpt.save_checkpoint(older, state)
    ckpt.save_checkpoint(newer, state)
    _flip_bit(newer)
    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint .*ckpt-000000008\.pt \(corrupt file: .*CRC"):
        assert ckpt.latest_checkpoint(tmp_path) == older
    nan_state = state | {"model": {k: v.clone() for k, v in weights.items()}}
    next(v for v in nan_state["model"].values() if v.is_floating_point()).fill_(float("inf"))
    ckpt.save_checkpoint(newer, nan_state)
    with pytest.warns(UserWarning, match="hold NaN or inf"):
        assert ckpt.latest_checkpoint(tmp_path) == older
