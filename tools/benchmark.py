#!/usr/bin/env python
"""Measure a VLT model on the current device: training iterations/s, peak memory, inference latency; or compare
the speed switches (README "Speed switches") on and off in one process.

    python tools/benchmark.py --config-file configs/vltseg_gta_clip_vit_b16.yaml --size 512 --batch 2
    python tools/benchmark.py --config-file configs/vltseg_gta.yaml --size 1024 --amp bf16      # on a GPU
    python tools/benchmark.py --config-file configs/vltseg_demo.yaml --compare --size 128 --batch 2 --rounds 3
    python tools/benchmark.py --towers ViT-B-16 EVA02-B-16 ViT-L-14 EVA02-L-14 --size 512    # towers alone
    python tools/benchmark.py --towers timm:vit_large_patch14_dinov2 timm:samvit_large_patch16 --size 512  # timm

Weights are random (no download): timings do not depend on them. Each figure is the median over ``--iters``
timed iterations (per round) after ``--warmup`` untimed ones; the table also gives each row relative to the first
row. ``--compare`` builds one model per switch setting (same weights) and runs a baseline with every switch off
(fp32, eager, grid_sample deformable attention, no activation checkpointing, one sliding window per batch) and each
switch on alone, in ``--rounds`` interleaved rounds (rotated order, so a load that drifts over the run hits all rows
alike); ratios are to the section's baseline. Peak memory: CUDA's allocator peak per row; on a CPU the process's
peak RSS during the row (all models included; the least disturbed round).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import os
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


def _reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: peak resident set size of the process (since the last reset
    where Linux allows it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB -> MiB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB


def time_iterations(fn: Callable[[], None], device: torch.device, iters: int) -> List[float]:
    """Seconds of each of ``iters`` calls."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_it(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call after ``warmup`` untimed calls (0 when ``iters`` is 0)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    return statistics.median(time_iterations(fn, device, iters)) if iters else 0.0


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


def _windows(model, test_size) -> int:
    """Sliding windows over one test image of ``test_size`` with the model's crop and stride."""
    from vlt.modeling.meta_arch.inference import sliding_window_grid

    rows, cols = sliding_window_grid(*test_size, model.slide_crop_size, model.slide_stride)
    return len(rows) * len(cols)


def fit_slide_window(model, size: int, test_size) -> None:
    """Keep the config's window where the test image holds it; else windows of the training size, stride 2/3."""
    if model.slide_crop_size[0] > test_size[0] or model.slide_crop_size[1] > test_size[1]:
        model.slide_crop_size, model.slide_stride = (size, size), (-(-2 * size // 3),) * 2


class Variant:
    """One row: config overrides (a model per distinct set), autocast on/off, sliding windows per batch."""

    def __init__(self, name: str, opts=(), amp: str = "off", windows: int = 0):
        self.name, self.opts, self.amp, self.windows = name, tuple(opts), amp, windows


def compare_variants(cfg: CfgNode, detection: bool, device: torch.device, args) -> Dict[str, List[Variant]]:
    """Each switch on against a baseline with every switch off (fp32, eager, grid_sample, no checkpointing)."""
    from vlt.engine.compile import compiler_available
    from vlt.modeling.seg.ms_deform_attn import fused_extension

    segmentation = cfg.MODEL.META_ARCHITECTURE == "VLTSegmentor"
    vit = cfg.MODEL.BACKBONE.NAME != "CLIPResNetBackbone"
    off = ["MODEL.COMPILE.PARTS", "[]", "MODEL.OPEN_CLIP.GRAD_CHECKPOINTING", "False"]
    if segmentation:
        off += ["MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL", "pytorch"]
    parts = args.compile_parts or (["tower"] if detection else ["tower", "head"])
    switches = [Variant("bf16 autocast", off, amp="bf16")]
    if compiler_available(cfg.MODEL.COMPILE.BACKEND):
        backend = "" if cfg.MODEL.COMPILE.BACKEND == "inductor" else f" ({cfg.MODEL.COMPILE.BACKEND} backend)"
        switches.append(Variant(f"torch.compile {'+'.join(parts)}{backend}", off + ["MODEL.COMPILE.PARTS", str(parts)]))
    else:
        print("torch.compile: no compiler here (inductor needs a C++ compiler on CPU): row left out")
    if segmentation and device.type == "cuda" and fused_extension() is not None:
        switches.append(Variant("fused deformable attention", off + ["MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL", "fused"]))
    elif segmentation:
        print("fused deformable attention: needs CUDA and the MultiScaleDeformableAttention extension: row left out")
    train = [Variant("baseline", off), *switches]
    if vit:
        train.append(Variant("activation checkpointing", off + ["MODEL.OPEN_CLIP.GRAD_CHECKPOINTING", "True"]))
    sections = {f"train step, batch {args.batch}": train, "inference, whole": [Variant("baseline", off), *switches]}
    if not detection:
        windows = [Variant(f"{n or 'all'} window{'s' if n != 1 else ''} per batch", off, windows=n)
                   for n in args.slide_windows]
        sections["inference, slide"] = windows
    return sections


def config_variants(cfg: CfgNode, detection: bool, args) -> Dict[str, List[Variant]]:
    """The config as it is (and --amp): one row per measurement."""
    config = Variant("config", amp=args.amp, windows=cfg.TEST.SLIDE.WINDOWS_PER_BATCH)
    sections = {f"train step, batch {args.batch}": [config], "inference, whole": [config]}
    if not detection:
        sections["inference, slide"] = [config]
    return sections


def benchmark_model(cfg: CfgNode, size: int, device: torch.device, args) -> List[Dict]:
    """Time every variant of every section, interleaved: ``--rounds`` rounds, each running every variant (in a
    rotated order) for ``--iters`` iterations, after ``--warmup`` untimed ones per variant and section (where
    torch.compile compiles). Figures: median time per iteration over all rounds; peak memory per variant."""
    from vlt.data import is_detection_config
    from vlt.engine import Trainer

    detection = is_detection_config(cfg)  # VLTDet: boxes instead of a label map
    sections = compare_variants(cfg, detection, device, args) if args.compare else config_variants(cfg, detection, args)
    models: Dict[tuple, tuple] = {}
    reference = None
    for variant in (v for variants in sections.values() for v in variants):
        if variant.opts in models:
            continue
        variant_cfg = cfg.clone()
        variant_cfg.defrost()
        variant_cfg.merge_from_list(list(variant.opts))
        torch.manual_seed(0)
        model = Trainer.build_model(variant_cfg).to(device)
        if reference is None:
            reference = model.state_dict()
        else:
            model.load_state_dict(reference)  # same weights in every row
        models[variant.opts] = (model, Trainer.build_optimizer(variant_cfg, model))
    batch = [synthetic_training_input(cfg, size, detection) for _ in range(args.batch)]
    test_size = tuple(args.test_size or (size, 2 * size))
    image = {"image": torch.randint(0, 256, (3, *test_size), dtype=torch.uint8), "height": test_size[0],
             "width": test_size[1]}

    def step(section: str, variant: Variant) -> Callable[[], None]:
        model, optimizer = models[variant.opts]
        if section.startswith("train"):
            model.train()

            def train_step():
                with autocast(device, variant.amp):
                    losses = model(batch)
                    loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            return train_step
        model.eval()
        if section.endswith("slide"):
            model.test_mode = "slide"
            fit_slide_window(model, size, test_size)
            model.slide_windows_per_batch = variant.windows or _windows(model, test_size)
        else:
            model.test_mode = "whole"

        def infer():
            with torch.no_grad(), autocast(device, variant.amp):
                model([image])

        return infer

    times = {(s, v.name): [] for s, variants in sections.items() for v in variants}
    peaks = {key: [] for key in times}
    warmup_seconds = {}
    with EventStorage(0):  # Detectron2's R-CNN heads log training statistics into one
        for section, variants in sections.items():
            for variant in variants:
                start = time.perf_counter()
                time_it(step(section, variant), device, args.warmup, 0)
                warmup_seconds[section, variant.name] = time.perf_counter() - start
        for r in range(args.rounds):
            for section, variants in sections.items():
                for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
                    _reset_peak_memory(device)
                    times[section, variant.name] += time_iterations(step(section, variant), device, args.iters)
                    peaks[section, variant.name].append(_peak_memory_mib(device))
    rows = []
    for section, variants in sections.items():
        base = statistics.median(times[section, variants[0].name])
        for variant in variants:
            seconds = statistics.median(times[section, variant.name])
            what = section
            if section.endswith("slide"):
                model = models[variant.opts][0]
                windows = _windows(model, test_size)
                what += f" {tuple(model.slide_crop_size)}/{tuple(model.slide_stride)}, {windows} windows"
            row = {"what": what, "input": f"{size}x{size}" if section.startswith("train") else
                   f"{test_size[0]}x{test_size[1]}"}
            if args.compare:
                row["variant"] = variant.name
            # CUDA: allocator peak (the largest round); CPU: process peak RSS (the least disturbed round)
            row.update({"ms": 1000 * seconds, "it/s": 1.0 / seconds, "x baseline": seconds / base,
                        "peak memory (MiB)": (max if device.type == "cuda" else min)(peaks[section, variant.name])})
            if args.compare:  # where torch.compile spends its compile time
                row["warm-up (s)"] = warmup_seconds[section, variant.name]
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", help="benchmark this model (train step + inference)")
    source.add_argument("--towers", nargs="+",
                        help="benchmark these towers' forward alone: open_clip names, or timm names as timm:<name>")
    parser.add_argument("--compare", action="store_true",
                        help="with --config-file: each speed switch on against a baseline with all off, interleaved")
    parser.add_argument("--size", type=int, default=512, help="square training / tower input size")
    parser.add_argument("--test-size", type=int, nargs=2, default=None,
                        help="inference input H W (default: size, 2 x size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per variant and round")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all variants (--compare: interleaved)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="without --compare")
    parser.add_argument("--compile-parts", nargs="+", default=None,
                        help="--compare: MODEL.COMPILE.PARTS of the torch.compile row (default: tower head)")
    parser.add_argument("--slide-windows", type=int, nargs="+", default=[1, 0],
                        help="--compare: sliding windows per batch of the slide rows (0 = all windows of the image)")
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
    if not args.compare:
        for row in rows:
            row.pop("x baseline", None)
            row["x first row"] = row[key] / rows[0][key]
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if device.type == "cpu" else ""
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"threads: {torch.get_num_threads()}{load}, torch {torch.__version__}"
          + (f", {args.rounds} interleaved rounds x {args.iters} iterations" if args.compare else f", amp: {args.amp}"))
    print(tabulate(rows, headers="keys", floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
