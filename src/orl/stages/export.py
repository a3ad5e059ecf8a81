"""Stage `orl export` (stage 4): write a model's ONLINE backbone as backbone.pth (torchvision) + backbone_d2.pkl.

    orl export --model results/pretrain/orl/model.pt --out-dir results/export/orl
    orl export --random-init --arch resnet50 --seed 0 --out-dir results/export/random

Writes into --out-dir: backbone.pth (torchvision ResNet state_dict, no fc.*), backbone_d2.pkl (Detectron2 names,
see docs/export.md for the Detectron2 settings it needs) and export.json (provenance and those settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BACKBONE = "backbone.pth"
DETECTRON2 = "backbone_d2.pkl"
INFO = "export.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl export`."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="orl model file (results/pretrain/<method>/model.pt) or checkpoint")
    src.add_argument("--random-init", action="store_true", help="export a randomly initialised backbone (reference)")
    parser.add_argument("--arch", default=None,
                        help="resnet18/34/50/101/152: required with --random-init; with --model it must match")
    parser.add_argument("--seed", type=int, default=0, help="--random-init: seed of the initialisation")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for backbone.pth, backbone_d2.pkl")


def export(
    out_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    arch: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Export `model`'s online backbone (or a random init of `arch` when model is None); returns export.json."""
    from orl.models import export as ex  # torch is imported lazily, as in every stage

    out_dir = Path(out_dir)
    if model is not None:
        from orl.bench.weights import sha256_file
        from orl.methods.pretrained import load_pretrained

        method = load_pretrained(model, map_location="cpu")
        state = ex.backbone_state(method)
        found = ex.arch_of(state)
        if arch is not None and arch != found:
            raise ValueError(f"--arch {arch} given but {model} holds a {found} backbone")
        arch = found
        source: dict[str, Any] = {"model": str(model), "model_sha256": sha256_file(model), "method": method.name,
                                  "hparams": method.hparams(), "network": "online"}
    else:
        if arch is None:
            raise ValueError("--random-init needs --arch (e.g. --arch resnet50)")
        state = ex.random_backbone_state(arch, seed)
        source = {"random_init": True, "seed": seed}
    ex.check_torchvision(state, arch)
    backbone = ex.write_torchvision(state, out_dir / BACKBONE)
    d2 = ex.write_detectron2(state, out_dir / DETECTRON2)
    info = {
        "arch": arch,
        **source,
        "backbone": str(backbone),
        "detectron2": str(d2),
        "num_tensors": len(state),
        "num_detectron2_tensors": len(ex.detectron2_names(state)),
        "detectron2_config": ex.detectron2_config(arch),
    }
    tmp = out_dir / f".{INFO}.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    os.replace(tmp, out_dir / INFO)  # last, so its presence means the two weight files are complete
    return info


def run(args: argparse.Namespace) -> None:
    """Export and print where the files went."""
    info = export(args.out_dir, None if args.random_init else args.model, args.arch, args.seed)
    what = f"random {info['arch']} (seed {info['seed']})" if info.get("random_init") else (
        f"{info['method']} {info['arch']} online backbone of {info['model']}"
    )
    print(f"exported {what} -> {info['backbone']}, {info['detectron2']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage without the `orl` dispatcher (python -m orl.stages.export ...)."""
    parser = argparse.ArgumentParser(prog="orl export", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
