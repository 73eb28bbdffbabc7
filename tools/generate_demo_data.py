#!/usr/bin/env python
"""Generate the VLT demo benchmark (procedural street scenes, Cityscapes layout, source + 4 shifted domains).

    python tools/generate_demo_data.py --root datasets/vlt_demo [--num-train 300 --num-val 50 --seed 0]

The datasets vlt_demo_source_{train,val} and vlt_demo_{fog,night,rain,shift}_val read it from
$DETECTRON2_DATASETS/vlt_demo (default ./datasets/vlt_demo).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import os
import sys
import time

from vlt.data.demo_generator import generate_demo_dataset
from vlt.utils.errors import run_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "vlt_demo"))
    parser.add_argument("--num-train", type=int, default=300, help="source training images")
    parser.add_argument("--num-val", type=int, default=50, help="validation images per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = generate_demo_dataset(args.root, args.num_train, args.num_val, args.seed, tuple(args.size))
    total = sum(counts.values())
    print(f"Wrote {total} images ({', '.join(f'{k}: {v}' for k, v in counts.items())}) to {args.root} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
