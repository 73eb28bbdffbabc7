#!/usr/bin/env python
"""Measure a VLT model on the current device: training iterations/s, peak memory, inference latency.

    python tools/benchmark.py --config-file configs/vltseg_gta_clip_vit_b16.yaml --size 512 --batch 2
    python tools/benchmark.py --config-file configs/vltseg_gta.yaml --size 1024 --amp bf16      # on a GPU
    python tools/benchmark.py --towers ViT-B-16 EVA02-B-16 ViT-L-14 EVA02-L-14 --size 512    # towers alone
    python tools/benchmark.py --towers timm:vit_large_patch14_dinov2 timm:samvit_large_patch16 --size 512  # timm

Weights are random (no download): timings do not depend on them. Each figure is the median over ``--iters``
timed iterations after ``--warmup`` untimed ones; the table also gives each row relative to the first row.
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from vlt.utils.errors import run_tool


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def time_it(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def synthetic_training_input(cfg, size: int, detection: bool) -> Dict:
    """One random training input of ``size`` x ``size``: a label map, or (VLTDet) eight random boxes."""
    record = {"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8), "height": size, "width": size}
    if not detection:
        record["sem_seg"] = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (size, size))
        return record
    from detectron2.structures import Boxes, Instances

    corner = torch.rand(8, 2) * size * 0.7  # [N, 2] top-left x, y
    extent = torch.rand(8, 2) * size * 0.3 + 8
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.cat([corner, (corner + extent).clamp(max=size)], dim=1))
    instances.gt_classes = torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (8,))
    record["instances"] = instances
    return record


def benchmark_towers(names: List[str], size: int, device: torch.device, args) -> List[Dict]:
    from vlt.modeling.backbone import OpenCLIPViT, build_vision_tower

    rows = []
    for name in names:
        source, model_name = name.split(":", 1) if name.startswith("timm:") else ("open_clip", name)
        tower, _ = build_vision_tower(source, model_name, patch_size=args.patch_size)
        vit = OpenCLIPViT(tower, out_features=["last_feat"]).to(device).eval()
        div = vit.patch_size
        side = size // div * div
        x = torch.randn(args.batch, 3, side, side, device=device)

        def forward(vit=vit, x=x):
            with torch.no_grad(), autocast(device, args.amp):
                vit(x)

        seconds = time_it(forward, device, args.warmup, args.iters)
        rows.append({
            "tower": name, "patch": tower.patch_size, "input": f"{side}x{side}",
            "params (M)": sum(p.numel() for p in vit.parameters()) / 1e6,
            "forward (ms/img)": 1000 * seconds / args.batch,
        })
    return rows


def benchmark_model(cfg: CfgNode, size: int, device: torch.device, args) -> List[Dict]:
    from vlt.data import is_detection_config
    from vlt.engine import Trainer

    model = Trainer.build_model(cfg).to(device)
    optimizer = Trainer.build_optimizer(cfg, model)
    detection = is_detection_config(cfg)  # VLTDet: boxes instead of a label map
    batch = [synthetic_training_input(cfg, size, detection) for _ in range(args.batch)]

    def train_step():
        with autocast(device, args.amp):
            losses = model(batch)
            loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = []
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with EventStorage(0):  # Detectron2's R-CNN heads log training statistics into one
        seconds = time_it(train_step, device, args.warmup, args.iters)
    rows.append({
        "what": f"train step, batch {args.batch}", "input": f"{size}x{size}", "ms": 1000 * seconds,
        "it/s": 1.0 / seconds, "peak memory (MiB)": _peak_memory_mib(device),
    })
    model.eval()
    test_size = args.test_size or size
    image = {"image": torch.randint(0, 256, (3, test_size[0], test_size[1]), dtype=torch.uint8)}
    image.update(height=test_size[0], width=test_size[1])
    for mode in ("whole",) if detection else ("whole", "slide"):
        model.test_mode = mode
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def infer():
            with torch.no_grad(), autocast(device, args.amp):
                model([image])

        seconds = time_it(infer, device, args.warmup, args.iters)
        rows.append({
            "what": f"inference, {mode}" + (f" {tuple(model.slide_crop_size)}/{tuple(model.slide_stride)}"
                                             if mode == "slide" else ""),
            "input": f"{test_size[0]}x{test_size[1]}", "ms": 1000 * seconds, "it/s": 1.0 / seconds,
            "peak memory (MiB)": _peak_memory_mib(device),
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", help="benchmark this model (train step + inference)")
    source.add_argument("--towers", nargs="+",
                        help="benchmark these towers' forward alone: open_clip names, or timm names as timm:<name>")
    parser.add_argument("--size", type=int, default=512, help="square training / tower input size")
    parser.add_argument("--test-size", type=int, nargs=2, default=None, help="inference input H W")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--patch-size", type=int, default=0, help="towers: convert to this patch size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.towers:
        rows = benchmark_towers(args.towers, args.size, device, args)
        key = "forward (ms/img)"
    else:
        from vlt.utils.config import load_config

        cfg = load_config(args.config_file, ["MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", args.device] + args.opts)
        rows = benchmark_model(cfg, args.size, device, args)
        key = "ms"
    for row in rows:
        row["x first row"] = row[key] / rows[0][key]
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"threads: {torch.get_num_threads()}, amp: {args.amp}")
    print(tabulate(rows, headers="keys", floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
