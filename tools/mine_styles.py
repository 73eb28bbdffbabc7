#!/usr/bin/env python
"""FAMix local style mining (Fahes et al., CVPR 2024, §3.2): one pass over the training set, (μ, σ) per patch,
saved as per-class style banks for MODEL.FAMIX.STYLE_BANK. Resumable: rerun the same command after a kill.

    python tools/mine_styles.py --config-file configs/famix_gta_rn50.yaml --output styles/famix_gta_rn50.pth
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import logging
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from vlt.data.semantic_mapper import read_image, read_sem_seg
from vlt.modeling.adapters.famix import IGNORE, vit_tap_block
from vlt.modeling.adapters.style_mining import (
    ResNetTapEmbedder,
    StyleBank,
    ViTTapEmbedder,
    load_famix_prompts,
    mine_patch_styles,
    prompt_table,
)
from vlt.modeling.backbone import build_open_clip_model, build_open_clip_tokenizer, pixel_stats
from vlt.utils.config import load_config
from vlt.utils.errors import run_tool

logger = logging.getLogger("vlt.mine_styles")


def random_crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator):
    """A random size × size crop of image [H, W, 3] / label [H, W]; pads (0 / 255) when the image is smaller.
    Returns the crops and the fraction of the crop that is padding."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=255)
    y, x = rng.integers(0, label.shape[0] - size + 1), rng.integers(0, label.shape[1] - size + 1)
    padding = 1.0 - min(h, size) * min(w, size) / (size * size)
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size], padding


def check_output(output: str) -> None:
    """Fail now, before CLIP is loaded, if the bank cannot be written to ``output``."""
    if os.path.isdir(output):
        raise IsADirectoryError(f"--output '{output}' is a folder; give the style bank's file name, e.g. "
                                f"{os.path.join(output, 'famix_styles.pth')}")
    folder = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write the style bank '{output}': folder '{folder}' is not writable "
                              f"({e.strerror or e})") from e


def training_images(dataset: str) -> List[Dict]:
    """The dataset's dicts (the loader fails here, naming a missing root, folder or split list), each with a label."""
    dicts = DatasetCatalog.get(dataset)
    if not dicts:
        raise ValueError(f"MODEL.FAMIX.MINING.DATASET / DATASETS.TRAIN[0] '{dataset}' has no images")
    unlabelled = [d["file_name"] for d in dicts if not d.get("sem_seg_file_name")]
    if unlabelled:
        raise ValueError(f"'{dataset}': {len(unlabelled)} images have no label (e.g. {unlabelled[0]}); style mining "
                         "needs the ground truth of a training set")
    return dicts


def mine_styles(cfg, output: str, device: str = "cpu", max_images: int = 0,
                allow_missing_classes: bool = False) -> StyleBank:
    """Mine the style bank of ``cfg`` (MODEL.FAMIX.*) into ``output``; continue a partial file if there is one.

    Inputs (dataset, split lists, prompts, output folder, a bank to resume) are checked before CLIP is loaded.
    A bank without styles for some class is left unfinished (training refuses it) and raises, unless
    ``allow_missing_classes`` (the mixer then draws those classes' styles from the "255" bank).
    """
    mining = cfg.MODEL.FAMIX.MINING
    dataset = mining.DATASET or cfg.DATASETS.TRAIN[0]
    dicts = training_images(dataset)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_names = list(MetadataCatalog.get(dataset).stuff_classes)[:num_classes]
    model_name = cfg.MODEL.OPEN_CLIP.MODEL_NAME
    prompts = load_famix_prompts(mining.PROMPTS_FILE)
    check_output(output)
    metadata = {
        "model_name": model_name, "pretrained": cfg.MODEL.OPEN_CLIP.PRETRAINED, "tap": cfg.MODEL.FAMIX.TAP,
        "grid": cfg.MODEL.FAMIX.GRID, "styles": prompts["styles"], "templates": prompts["templates"],
        "ignore_prompt": prompts["ignore_prompt"], "class_names": class_names, "dataset": dataset,
    }
    bank = StyleBank(metadata)
    if os.path.isfile(output):
        bank = StyleBank.load(output)
        for key in ("model_name", "tap", "grid", "dataset"):
            if bank.metadata.get(key) != metadata[key]:
                raise ValueError(f"{output}: partial bank has {key}={bank.metadata.get(key)!r}, config has "
                                 f"{metadata[key]!r}; delete it or pick another --output")
        logger.info("Resuming %s: %d images done", output, len(bank.done_images))

    rng = np.random.default_rng(mining.SEED)
    order = rng.permutation(len(dicts))
    if max_images:
        order = order[:max_images]
    done = set(bank.done_images)
    todo = [dicts[i] for i in order if dicts[i]["file_name"] not in done]
    batches = [todo[i:i + mining.BATCH_SIZE] for i in range(0, len(todo), mining.BATCH_SIZE)]
    if mining.DROP_LAST and batches and len(batches[-1]) < mining.BATCH_SIZE:  # as the release
        logger.info("MODEL.FAMIX.MINING.DROP_LAST: the last %d images (a partial batch) are not mined",
                    len(batches.pop()))

    clip = build_open_clip_model(model_name, cfg.MODEL.OPEN_CLIP.PRETRAINED, cfg.MODEL.OPEN_CLIP.CACHE_DIR,
                                 keep_text_tower=True).to(device).eval()
    clip.requires_grad_(False)
    is_resnet = hasattr(clip.visual, "attnpool")
    class_table, ignore_prompt = prompt_table(clip, build_open_clip_tokenizer(model_name), class_names, prompts,
                                              device)
    tap = cfg.MODEL.FAMIX.TAP
    if is_resnet:
        embedder = ResNetTapEmbedder(clip.visual, tap)
    else:  # ours: after block i of a ViT tower (TAP "block<i>")
        embedder = ViTTapEmbedder(clip.visual, vit_tap_block(tap))
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in pixel_stats(model_name))

    generator = torch.Generator().manual_seed(mining.SEED + len(done))
    mostly_padding = []
    for step, batch in enumerate(tqdm(batches, desc="FAMix style mining", unit="batch")):
        images, labels = [], []
        for d in batch:
            image, label, padding = random_crop(read_image(d["file_name"], "RGB"),
                                                read_sem_seg(d["sem_seg_file_name"], num_classes), mining.CROP_SIZE,
                                                rng)
            if padding > 0.5:
                if not mostly_padding:
                    logger.warning("%s is smaller than MODEL.FAMIX.MINING.CROP_SIZE %d: %.0f%% of its crop is "
                                   "padding (ignore), so its patches mostly mine 'photo' (255) styles",
                                   d["file_name"], mining.CROP_SIZE, 100 * padding)
                mostly_padding.append(d["file_name"])
            images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
            labels.append(torch.from_numpy(np.ascontiguousarray(label)).long())
        x = (torch.stack(images).to(device).float() - mean) / std
        with torch.no_grad():
            features, prefix = embedder.tap_with_prefix(x) if not is_resnet else (embedder.tap(x), None)
        result = mine_patch_styles(
            embedder, features, torch.stack(labels).to(device), class_table, ignore_prompt,
            grid=cfg.MODEL.FAMIX.GRID, steps=mining.STEPS, lr=mining.LR, momentum=mining.MOMENTUM,
            weight_decay=mining.WEIGHT_DECAY, resize=mining.RESIZE, one_patch_per_class=mining.ONE_PATCH_PER_CLASS,
            relu=cfg.MODEL.FAMIX.RELU and is_resnet, prefix=prefix, generator=generator,
        )
        bank.add(result["classes"], result["stats"], [d["file_name"] for d in batch])
        if mining.SAVE_PERIOD and (step + 1) % mining.SAVE_PERIOD == 0:
            bank.save(output, complete=False)
    if mostly_padding:
        logger.warning("%d of %d mined crops were mostly padding (images smaller than the %d crop); lower "
                       "MODEL.FAMIX.MINING.CROP_SIZE for this dataset", len(mostly_padding),
                       sum(len(b) for b in batches), mining.CROP_SIZE)
    sizes = {k: len(v) for k, v in bank.banks().items()}
    missing = [f"{k} {name}" for k, name in enumerate(class_names) if k not in sizes]
    if missing:
        only_ignore = " (every mined patch was ignore-dominated)" if set(sizes) <= {IGNORE} else ""
        message = (f"{output}: no styles for {len(missing)} of {num_classes} classes: {', '.join(missing)}; styles "
                   f"per class {sizes}{only_ignore}")
        if not allow_missing_classes:
            bank.save(output, complete=False)
            raise ValueError(f"{message}. Saved unfinished (training refuses it): mine more images, or rerun with "
                             "--allow-missing-classes to accept it (the mixer then draws those classes' styles "
                             "from the '255' bank)")
        logger.warning("%s; accepted (--allow-missing-classes)", message)
    bank.save(output, complete=True)
    logger.info("Saved %s: styles per class %s", output, sizes)
    return bank


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", default="", help="bank file (default: MODEL.FAMIX.STYLE_BANK, else "
                                                     "OUTPUT_DIR/famix_styles.pth)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-images", type=int, default=0, help="mine only this many images (0 = all)")
    parser.add_argument("--allow-missing-classes", action="store_true",
                        help="finish a bank that has no styles for some classes (default: refuse, naming them)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args.config_file, args.opts)
    output = args.output or cfg.MODEL.FAMIX.STYLE_BANK or os.path.join(cfg.OUTPUT_DIR, "famix_styles.pth")
    mine_styles(cfg, output, args.device, args.max_images, args.allow_missing_classes)


if __name__ == "__main__":
    sys.exit(run_tool(main))
