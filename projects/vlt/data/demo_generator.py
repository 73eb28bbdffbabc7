"""The VLT demo benchmark: procedurally rendered street scenes with a source domain and four shifted targets.

Every scene is a random layout (horizon, vanishing point, buildings and trees along the street, a road in
perspective with dashed lane markings, sidewalks, poles with signs, persons, cars) drawn with per-class colours
and simple textures, so a tiny ViT learns it in a few hundred CPU iterations. Nine Cityscapes classes occur
(train ids in ``DEMO_TRAIN_IDS``). The target domains render the *same* validation layouts (identical labels)
under a shift that changes the pixels, not the content:

- ``fog``: blend toward a grey airlight with depth (Koschmieder's model, transmission exp(-beta * depth));
- ``night``: dark, blue-cast, noisy image with glowing street lamps and car lights;
- ``rain``: darker, slightly blurred image with bright slanted streaks;
- ``shift``: a different palette (hue-rotated class colours) and different textures (stripes, checkers, grain).

Files follow the Cityscapes layout and encodings (``leftImg8bit``, ``gtFine_labelIds``, ``gtFine_labelTrainIds``,
``gtFine_instanceIds`` with ``label_id * 1000 + k`` for each person / car), with one "city" per domain, so
Cityscapes tools and VLTDet's box extraction read them unchanged. Generation is deterministic for a seed.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .cityscapes_classes import CLASSES, LABELS, TRAIN_ID_TO_LABEL_ID_LUT

__all__ = [
    "DEMO_TRAIN_IDS",
    "ensure_demo_dataset",
    "DEMO_DOMAINS",
    "DEMO_TARGET_DOMAINS",
    "DemoScene",
    "render_layout",
    "paint_scene",
    "apply_domain",
    "render_image",
    "demo_file_stem",
    "generate_demo_dataset",
]

ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = (
    CLASSES.index(name)
    for name in ("road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "sky", "person", "car")
)
DEMO_TRAIN_IDS: Tuple[int, ...] = tuple(sorted((ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR)))
DEMO_TARGET_DOMAINS = ("fog", "night", "rain", "shift")
DEMO_DOMAINS = ("source",) + DEMO_TARGET_DOMAINS
_LABEL_ID = {label.train_id: label.id for label in LABELS if label.train_id != 255}
_SPLIT_CODES = {"train": 1, "val": 2}
_DOMAIN_CODES = {domain: i for i, domain in enumerate(DEMO_DOMAINS)}

# Parts: what a pixel is within its class (colour detail; the label is the class).
BASE, DARK_DETAIL, BRIGHT_DETAIL, WHEEL, SKIN = range(5)

# Class colours (RGB, 0..1) of the source palette; "shift" rotates their hues and changes the textures.
SOURCE_PALETTE = {
    SKY: (0.55, 0.72, 0.92), BUILDING: (0.62, 0.52, 0.46), ROAD: (0.36, 0.36, 0.38), SIDEWALK: (0.78, 0.72, 0.62),
    VEGETATION: (0.22, 0.55, 0.2), POLE: (0.45, 0.45, 0.47), SIGN: (0.95, 0.8, 0.15), PERSON: (0.78, 0.18, 0.22),
    CAR: (0.15, 0.3, 0.75),
}


@dataclass
class DemoScene:
    """A rendered layout: labels, instances, depth and the per-pixel colour ingredients."""

    train_ids: np.ndarray  # uint8 [H, W]
    instance_ids: np.ndarray  # int32 [H, W], Cityscapes encoding (label_id * 1000 + k for things, else label_id)
    depth: np.ndarray  # float32 [H, W], 0 = nearest (bottom row) .. 1 = sky
    part: np.ndarray  # uint8 [H, W], BASE / DARK_DETAIL / BRIGHT_DETAIL / WHEEL / SKIN
    tint: np.ndarray  # float32 [H, W, 3], per-object colour factor
    lights: List[Tuple[float, float, float]] = field(default_factory=list)  # (y, x, radius) of lamps / car lights


class _Canvas:
    """Painter's-algorithm canvas: later shapes cover earlier ones in every map."""

    def __init__(self, height: int, width: int):
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.train_ids = np.full((height, width), SKY, np.uint8)
        self.instance_ids = np.full((height, width), _LABEL_ID[SKY], np.int32)
        self.depth = np.ones((height, width), np.float32)
        self.part = np.zeros((height, width), np.uint8)
        self.tint = np.ones((height, width, 3), np.float32)
        self.counts: Dict[int, int] = {}

    def draw(self, mask: np.ndarray, train_id: int, depth, tint, instance: bool = False, part: int = BASE) -> None:
        """Fill ``mask`` with a class (a new instance id for things), its depth, tint and part."""
        label_id = _LABEL_ID[train_id]
        if instance:
            k = self.counts.get(train_id, 0)
            self.counts[train_id] = k + 1
            label_id = label_id * 1000 + k
        self.train_ids[mask] = train_id
        self.instance_ids[mask] = label_id
        self.depth[mask] = depth if np.isscalar(depth) else depth[mask]
        self.tint[mask] = tint
        self.part[mask] = part

    def detail(self, mask: np.ndarray, part: int) -> None:
        """Mark a colour detail (windows, wheels, ...) without changing labels."""
        self.part[mask] = part


def _tint(rng: np.random.Generator, spread: float = 0.12) -> np.ndarray:
    return (rng.uniform(1 - spread, 1 + spread) * rng.uniform(1 - spread / 3, 1 + spread / 3, 3)).astype(np.float32)


def render_layout(rng: np.random.Generator, height: int = 128, width: int = 256) -> DemoScene:
    """Draw one random street layout (all maps of :class:`DemoScene`)."""
    c = _Canvas(height, width)
    yy, xx = c.yy, c.xx
    horizon = int(height * rng.uniform(0.42, 0.52))
    vanish_x = width * rng.uniform(0.35, 0.65)
    ground_depth = np.clip((height - 1 - yy) / max(height - 1 - horizon, 1), 0, 1) * 0.85  # 0.85 at the horizon

    # Skyline: buildings (with window grids) and tree masses along the street, up to the horizon.
    x = -rng.uniform(0, 0.1) * width
    while x < width:
        block_w = rng.uniform(0.12, 0.3) * width
        top = horizon - rng.uniform(0.12, 0.38) * height
        if rng.random() < 0.3:  # a tree mass: overlapping discs
            crowns = np.zeros_like(c.train_ids, dtype=bool)
            for _ in range(rng.integers(2, 5)):
                cx, r = x + rng.uniform(0, block_w), rng.uniform(0.25, 0.5) * block_w
                cy = rng.uniform(min(top + r, horizon - 0.3 * r), horizon - 0.3 * r)
                crowns |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            c.draw(crowns & (yy < horizon + 2), VEGETATION, 0.8, _tint(rng))
        else:
            box = (xx >= x) & (xx < x + block_w) & (yy >= top) & (yy < horizon + 2)
            c.draw(box, BUILDING, 0.82, _tint(rng, 0.2))
            period_x, period_y = rng.uniform(7, 12), rng.uniform(8, 13)
            windows = box & (((xx - x) % period_x) > 0.45 * period_x) & (((yy - top) % period_y) > 0.5 * period_y)
            windows &= (yy > top + 3) & (yy < horizon - 3)
            c.detail(windows, DARK_DETAIL)
        x += block_w

    # Ground: sidewalk everywhere below the horizon, the road a perspective trapezoid over it.
    ground = yy >= horizon
    c.draw(ground, SIDEWALK, ground_depth, _tint(rng, 0.06))
    left_bottom = width * rng.uniform(-0.35, 0.15)
    right_bottom = width * rng.uniform(0.85, 1.35)
    half_top = width * rng.uniform(0.01, 0.03)
    t = np.clip((yy - horizon) / max(height - 1 - horizon, 1), 0, 1)  # 0 at the horizon, 1 at the bottom
    road_left = (vanish_x - half_top) + t * (left_bottom - (vanish_x - half_top))
    road_right = (vanish_x + half_top) + t * (right_bottom - (vanish_x + half_top))
    road = ground & (xx >= road_left) & (xx <= road_right)
    c.draw(road, ROAD, ground_depth, _tint(rng, 0.06))
    centre = 0.5 * (road_left + road_right)
    dashes = np.sin(28.0 / (np.maximum(yy - horizon, 0) + 4.0) * np.pi) > 0  # dash length grows toward the camera
    lane = road & (np.abs(xx - centre) < 0.4 + 2.2 * t) & dashes & (t > 0.08)
    c.detail(lane, BRIGHT_DETAIL)

    # Objects standing on the ground, far to near so nearer ones cover farther ones.
    objects = []
    for _ in range(rng.integers(1, 4)):
        objects.append(("pole", rng.uniform(0.15, 0.95)))
    for _ in range(rng.integers(0, 4)):
        objects.append(("person", rng.uniform(0.2, 0.95)))
    for _ in range(rng.integers(1, 5)):
        objects.append(("car", rng.uniform(0.15, 0.9)))
    lights = []
    for kind, near in sorted(objects, key=lambda o: o[1]):
        base_y = horizon + near * (height - 1 - horizon)
        scale = max(base_y - horizon, 2.0)  # apparent size grows linearly with distance below the horizon
        depth = 0.85 * (1 - near)
        row_left = vanish_x - half_top + near * (left_bottom - vanish_x + half_top)
        row_right = vanish_x + half_top + near * (right_bottom - vanish_x - half_top)
        if kind == "car":
            car_w = scale * rng.uniform(1.2, 1.7)
            cx = rng.uniform(row_left + 0.5 * car_w, max(row_right - 0.5 * car_w, row_left + 0.5 * car_w + 1))
            car_h = car_w * rng.uniform(0.5, 0.62)
            x0, x1, y1 = cx - car_w / 2, cx + car_w / 2, base_y
            body = (xx >= x0) & (xx <= x1) & (yy <= y1) & (yy >= y1 - 0.55 * car_h)
            cabin = (np.abs(xx - cx) <= 0.32 * car_w) & (yy < y1 - 0.55 * car_h) & (yy >= y1 - car_h)
            car = body | cabin
            c.draw(car, CAR, depth, _tint(rng, 0.25), instance=True)
            windows = cabin & (xx >= x0 + 0.24 * car_w) & (xx <= x1 - 0.24 * car_w) & (yy >= y1 - 0.92 * car_h)
            c.detail(windows, DARK_DETAIL)
            wheel_r = 0.13 * car_w
            for wx in (x0 + 0.22 * car_w, x1 - 0.22 * car_w):
                c.detail(car & ((yy - y1) ** 2 + (xx - wx) ** 2 < wheel_r**2), WHEEL)
            lights += [(y1 - 0.35 * car_h, lx, 0.12 * car_w) for lx in (x0 + 0.08 * car_w, x1 - 0.08 * car_w)]
            continue
        # Poles and persons stand on the sidewalk, left or right of the road.
        margin = 0.15 * scale
        sides = [s for s, visible in ((0, row_left - margin > 1), (1, row_right + margin < width - 2)) if visible]
        if not sides:  # the road fills this row: no sidewalk in view
            continue
        side = sides[rng.integers(0, len(sides))]
        if side == 0:
            px = rng.uniform(max(row_left - 0.6 * scale, 0), row_left - margin)
        else:
            px = rng.uniform(row_right + margin, min(row_right + 0.6 * scale, width - 1))
        if kind == "pole":
            pole_h = scale * rng.uniform(2.2, 3.2)
            pole_w = max(1.2, 0.05 * scale)
            pole = (np.abs(xx - px) <= pole_w / 2) & (yy <= base_y) & (yy >= base_y - pole_h)
            c.draw(pole, POLE, depth, _tint(rng, 0.05))
            if rng.random() < 0.7:
                size = max(2.5, 0.22 * scale)
                sy, sx = base_y - pole_h + size, px + (size if side == 0 else -size) * 0.6
                sign = np.maximum(np.abs(yy - sy), np.abs(xx - sx)) <= size / 2 if rng.random() < 0.5 else (
                    (yy - sy) ** 2 + (xx - sx) ** 2 <= (size / 2) ** 2)
                c.draw(sign, SIGN, depth, _tint(rng, 0.1))
            lights.append((base_y - pole_h, px, 0.25 * scale))
        else:
            person_h = scale * rng.uniform(0.9, 1.2)
            centre_y = base_y - 0.42 * person_h
            body = ((xx - px) / (0.16 * person_h)) ** 2 + ((yy - centre_y) / (0.42 * person_h)) ** 2 <= 1
            head_r = 0.1 * person_h
            head = (yy - (base_y - 0.86 * person_h)) ** 2 + (xx - px) ** 2 <= head_r**2
            c.draw(body | head, PERSON, depth, _tint(rng, 0.2), instance=True)
            c.detail(head, SKIN)
    return DemoScene(c.train_ids, c.instance_ids, c.depth, c.part, c.tint, lights)


def _hue_rotate(rgb: Sequence[float], degrees: float) -> np.ndarray:
    """Rotate an RGB colour's hue (float 0..1)."""
    pixel = np.array([[rgb]], np.float32)
    hsv = cv2.cvtColor(pixel, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + degrees) % 360
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)


def paint_scene(scene: DemoScene, rng: np.random.Generator, shifted: bool = False) -> np.ndarray:
    """Colour a layout: class palette x object tint, part details, class textures. Float RGB [H, W, 3] in 0..1."""
    height, width = scene.train_ids.shape
    hue_shift = rng.uniform(70, 110) if shifted else 0.0
    palette = np.zeros((256, 3), np.float32)
    for train_id, color in SOURCE_PALETTE.items():
        palette[train_id] = _hue_rotate(color, hue_shift) if shifted else color
    image = palette[scene.train_ids] * scene.tint * rng.uniform(0.9, 1.1)
    parts = scene.part
    image[parts == DARK_DETAIL] *= 0.35
    image[parts == WHEEL] = 0.08
    image[parts == BRIGHT_DETAIL] = 0.92
    image[parts == SKIN] = (0.9, 0.72, 0.6) if not shifted else (0.55, 0.4, 0.3)
    ids = scene.train_ids
    yy, xx = np.mgrid[0:height, 0:width]
    if not shifted:  # source: flat colours, mild grain, blotchy foliage
        image += rng.normal(0, 0.015, image.shape).astype(np.float32)
        image[ids == VEGETATION] *= 1 + 0.25 * _smooth_noise(rng, height, width, 4)[ids == VEGETATION, None]
    else:  # shift: stripes on buildings, checkered sidewalks, strong grain on the road, smooth foliage
        image[(ids == BUILDING) & (yy % 4 < 2)] *= 0.8
        image[(ids == SIDEWALK) & (((yy // 4) + (xx // 4)) % 2 == 0)] *= 0.85
        road = ids == ROAD
        image[road] *= 1 + rng.normal(0, 0.12, (int(road.sum()), 1)).astype(np.float32)
        image[ids == SKY] *= 1 + 0.15 * _smooth_noise(rng, height, width, 32)[ids == SKY, None]
        image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def apply_domain(image: np.ndarray, scene: DemoScene, domain: str, rng: np.random.Generator) -> np.ndarray:
    """Apply a domain shift ("source" and "shift": none; "fog", "night", "rain") to a painted image (float 0..1)."""
    height, width = scene.train_ids.shape
    if domain in ("source", "shift"):
        return image
    if domain == "fog":
        beta = rng.uniform(1.2, 1.6)
        transmission = np.exp(-beta * scene.depth)[..., None]
        airlight = np.float32(rng.uniform(0.72, 0.82))
        return np.clip(image * transmission + airlight * (1 - transmission), 0, 1)
    if domain == "night":
        cast = np.array([0.75, 0.85, 1.25], np.float32)
        dark = np.power(image, 1.3) * rng.uniform(0.35, 0.45) * cast
        dark[scene.train_ids == SKY] *= 0.3
        glow = np.zeros((height, width), np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        for ly, lx, radius in scene.lights:
            radius = max(radius, 1.5)
            glow += np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * radius * radius))
        warm = np.array([1.0, 0.85, 0.55], np.float32)
        noise = rng.normal(0, 0.015, image.shape).astype(np.float32)
        return np.clip(dark + 0.9 * glow[..., None] * warm + noise, 0, 1)
    if domain == "rain":
        wet = cv2.GaussianBlur(image * 0.75, (0, 0), 1.1)
        gray = wet.mean(axis=2, keepdims=True)
        wet = 0.65 * wet + 0.35 * gray + 0.05  # desaturated, veiled
        streaks = np.zeros((height, width), np.float32)
        angle = rng.uniform(-0.35, 0.35)
        for _ in range(height * width // 90):
            y, x, length = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 12)
            end = (int(x + length * np.sin(angle)), int(y + length * np.cos(angle)))
            cv2.line(streaks, (int(x), int(y)), end, float(rng.uniform(0.25, 0.45)), 1, cv2.LINE_AA)
        return np.clip(wet + streaks[..., None], 0, 1)
    raise ValueError(f"Unknown demo domain '{domain}'; expected one of {DEMO_DOMAINS}")


def _scene_rng(seed: int, split: str, index: int, domain: str = "") -> np.random.Generator:
    """Independent generator for (seed, split, index[, domain]), so any image can be re-rendered alone."""
    key = [seed, _SPLIT_CODES[split], index] + ([_DOMAIN_CODES[domain]] if domain else [])
    return np.random.default_rng(key)


def render_image(seed: int, split: str, index: int, domain: str = "source", size: Tuple[int, int] = (128, 256)):
    """Render scene ``index`` of ``split`` in ``domain``: (image RGB uint8 [H, W, 3], DemoScene)."""
    scene = render_layout(_scene_rng(seed, split, index), *size)
    image = paint_scene(scene, _scene_rng(seed, split, index, "shift" if domain == "shift" else "source"),
                        shifted=domain == "shift")
    image = apply_domain(image, scene, domain, _scene_rng(seed, split, index, domain))
    return np.round(image * 255).astype(np.uint8), scene


def demo_file_stem(domain: str, index: int) -> str:
    """Cityscapes-style name ``<city>_<seq>_<frame>`` (the domain is the city)."""
    return f"{domain}_{index:06d}_000019"


def _write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array):
        raise OSError(f"Cannot write '{path}'")


def generate_demo_dataset(
    root: str, num_train: int = 300, num_val: int = 50, seed: int = 0, size: Tuple[int, int] = (128, 256)
) -> Dict[str, int]:
    """Write the demo benchmark under ``root`` (Cityscapes layout); returns the image count per split/domain."""
    splits = [("train", "source", num_train)] + [("val", domain, num_val) for domain in DEMO_DOMAINS]
    counts = {}
    for split, domain, count in splits:
        image_dir = os.path.join(root, "leftImg8bit", split, domain)
        label_dir = os.path.join(root, "gtFine", split, domain)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for index in range(count):
            image, scene = render_image(seed, split, index, domain, size)
            stem = demo_file_stem(domain, index)
            _write_png(os.path.join(image_dir, f"{stem}_leftImg8bit.png"), image[..., ::-1])  # RGB -> BGR for cv2
            _write_png(os.path.join(label_dir, f"{stem}_gtFine_labelTrainIds.png"), scene.train_ids)
            label_ids = TRAIN_ID_TO_LABEL_ID_LUT[scene.train_ids]
            _write_png(os.path.join(label_dir, f"{stem}_gtFine_labelIds.png"), label_ids)
            _write_png(os.path.join(label_dir, f"{stem}_gtFine_instanceIds.png"), scene.instance_ids.astype(np.uint16))
        counts[f"{split}/{domain}"] = count
    info = {
        "generator": "vlt.data.demo_generator", "seed": seed, "size": list(size), "counts": counts,
        "classes": {CLASSES[i]: i for i in DEMO_TRAIN_IDS},
    }
    with open(os.path.join(root, "vlt_demo.json"), "w") as f:
        json.dump(info, f, indent=1)
    return counts


def ensure_demo_dataset(root: str, **generate_kwargs) -> bool:
    """Generate the demo benchmark under ``root`` (``generate_demo_dataset``'s defaults unless given) unless a
    finished one is there (its ``vlt_demo.json`` is written last); returns whether it generated it."""
    if os.path.isfile(os.path.join(root, "vlt_demo.json")):
        return False
    generate_demo_dataset(root, **generate_kwargs)
    return True
