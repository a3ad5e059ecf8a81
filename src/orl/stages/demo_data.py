"""Stage `orl demo-data`: write the built-in synthetic COCO scene dataset (train + val) for demos and tests."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orl.data import demo_scenes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl demo-data`."""
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to (re)write")
    parser.add_argument("--seed", type=int, default=demo_scenes.DEFAULT_SEED, help="same seed -> same bytes")
    parser.add_argument("--num-train", type=int, default=demo_scenes.DEFAULT_NUM_TRAIN, help="train images")
    parser.add_argument("--num-val", type=int, default=demo_scenes.DEFAULT_NUM_VAL, help="val images")
    parser.add_argument(
        "--image-size", type=int, default=demo_scenes.DEFAULT_IMAGE_SIZE, help="side of the square images (px)"
    )
    parser.add_argument(
        "--min-objects", type=int, default=demo_scenes.DEFAULT_MIN_OBJECTS, help="fewest objects per image"
    )
    parser.add_argument(
        "--max-objects", type=int, default=demo_scenes.DEFAULT_MAX_OBJECTS, help="most objects per image"
    )
    parser.add_argument(
        "--world",
        nargs="*",
        default=[],
        metavar="KNOB=JSON",
        help="scene-distribution knobs of orl.data.demo_scenes.World, e.g. saturation=1 'scale=[0.06,0.22]'",
    )


def parse_world(pairs: list[str]) -> demo_scenes.World:
    """KNOB=JSON words -> a World (unset knobs keep their defaults)."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--world entries are KNOB=JSON, got {pair!r}")
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--world {key}: {text!r} is not JSON ({e.msg})") from None
    return demo_scenes.World.from_mapping(values)


def run(args: argparse.Namespace) -> None:
    """Generate the dataset and print a one-line summary."""
    start = time.perf_counter()
    paths = demo_scenes.generate_demo_dataset(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        world=parse_world(args.world),
    )
    counts = []
    for split in ("train", "val"):
        doc = json.loads(paths[f"{split}_annotations"].read_text(encoding="utf-8"))
        counts.append(f"{len(doc['images'])} {split} images / {len(doc['annotations'])} objects")
    print(
        f"demo data (seed {args.seed}, {args.image_size} px, {len(demo_scenes.CATEGORIES)} categories): "
        f"{', '.join(counts)} -> {args.out} in {time.perf_counter() - start:.1f} s"
    )
