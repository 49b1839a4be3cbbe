"""ToyWorld: procedural scenes for language-driven segmentation, with no downloads.

A scene is a textured "stuff" background (grass, sand, water, sky, road, snow) with 1-5 "thing" objects
(shape x colour), drawn back to front so later objects occlude earlier ones. Everything is a pure function
of ``(seed, index, config)``: the same arguments give the same pixels on every machine.

Per scene: ``image`` HxWx3 uint8 RGB, ``semantic`` HxW uint8 (index into :data:`CLASSES`), ``instances``
HxW uint8 (0 = background, k = object k-1 of ``objects``), ``objects`` (shape, colour, visible area, bbox,
centroid), a ``caption`` and referring ``expressions`` with their target object.

Splits (see :data:`SPLITS`):
- ``seen`` / ``unseen`` shape names: hexagon and heart are never segmentation labels in training.
- unseen colour-shape combinations (:data:`UNSEEN_COMBOS`) never appear in training scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "heart")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
STUFF = ("grass", "sand", "water", "sky", "road", "snow")
CLASSES = SHAPES + STUFF  # semantic mask value = index in CLASSES
UNSEEN_SHAPES = ("hexagon", "heart")
SEEN_SHAPES = tuple(s for s in SHAPES if s not in UNSEEN_SHAPES)
UNSEEN_COMBOS = (("red", "star"), ("blue", "circle"), ("yellow", "triangle"), ("green", "square"),
                 ("purple", "cross"), ("orange", "ring"), ("white", "hexagon"), ("black", "heart"))
IGNORE = 255

RGB = {"red": (215, 40, 35), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (240, 215, 40),
       "purple": (135, 50, 170), "orange": (245, 135, 25), "white": (245, 245, 245), "black": (25, 25, 25)}

SPLITS = {
    # shapes allowed in scenes, and which colour-shape pairs are excluded
    "train": {"shapes": SEEN_SHAPES, "exclude_combos": UNSEEN_COMBOS},
    "seen": {"shapes": SEEN_SHAPES, "exclude_combos": ()},
    "unseen": {"shapes": UNSEEN_SHAPES, "exclude_combos": ()},
    "all": {"shapes": SHAPES, "exclude_combos": ()},
    "clip": {"shapes": SHAPES, "exclude_combos": UNSEEN_COMBOS},
}
# Offsets keep the random streams of different splits apart.
_SPLIT_SEED = {"train": 0, "seen": 1_000_003, "unseen": 2_000_003, "all": 3_000_017, "clip": 4_000_037}


@dataclass
class ToyObject:
    shape: str
    colour: str
    centre: tuple[float, float]  # (x, y) pixels
    size: float  # side of the bounding square, pixels
    angle: float  # degrees
    area: int = 0  # visible pixels after occlusion
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (exclusive) of the visible part
    centroid: tuple[float, float] = (0.0, 0.0)  # (x, y) of the visible part

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Expression:
    text: str
    target: int  # index into Scene.objects
    kind: str  # colour_shape | position | size | relation


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8
    semantic: np.ndarray  # HxW uint8, index into CLASSES
    instances: np.ndarray  # HxW uint8, 0 = background, k = objects[k-1]
    stuff: str
    objects: list[ToyObject]
    caption: str
    expressions: list[Expression] = field(default_factory=list)

    def instance_mask(self, i: int) -> np.ndarray:
        """HxW bool mask of object ``i`` (visible part)."""
        return self.instances == i + 1


# ----------------------------------------------------------------------------------------------- textures
def _texture(stuff: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 float32 texture in [0, 255] for one stuff class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    if stuff == "grass":
        base = np.array([70, 140, 50], np.float32)
        blades = np.sin(xx * size * rng.uniform(1.5, 2.5) + noise * 0.8) * 18
        img = base + blades[..., None] * np.array([0.5, 1.0, 0.3]) + noise[..., None] * 10
    elif stuff == "sand":
        base = np.array([215, 190, 135], np.float32)
        ripples = np.sin((xx + 0.3 * yy) * 25 + phase) * 8
        img = base + ripples[..., None] + noise[..., None] * 9
    elif stuff == "water":
        base = np.array([40, 105, 170], np.float32)
        waves = np.sin(yy * 40 + np.sin(xx * 12 + phase) * 2) * 14
        img = base + waves[..., None] * np.array([0.3, 0.6, 1.0]) + noise[..., None] * 5
    elif stuff == "sky":
        top, bottom = np.array([95, 150, 225], np.float32), np.array([185, 215, 245], np.float32)
        img = top + (bottom - top) * yy[..., None]
        cloud = np.clip(np.sin(xx * 9 + phase) * np.sin(yy * 7 + phase * 0.5) - 0.55, 0, 1) * 220
        img = img + cloud[..., None] + noise[..., None] * 3
    elif stuff == "road":
        base = np.array([95, 95, 100], np.float32)
        img = base + noise[..., None] * 12
        lane = (np.abs(((xx + phase / 7) % 0.5) - 0.25) < 0.012) & (((yy * 6) % 1.0) < 0.6)
        img[lane] = (225, 215, 120)
    elif stuff == "snow":
        base = np.array([232, 236, 245], np.float32)
        img = base + noise[..., None] * 6 + (np.sin(xx * 15 + yy * 9 + phase) * 5)[..., None]
    else:
        raise ValueError(f"unknown stuff class {stuff!r}; expected one of {STUFF}")
    return np.clip(img, 0, 255).astype(np.float32)


# ----------------------------------------------------------------------------------------------- shapes
def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline of a polygonal shape of circumradius ``r`` (pixels), rotated by ``angle`` degrees."""
    a = math.radians(angle)

    def ring_pts(n: int, radii: list[float], start: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [(math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n), radii[k % len(radii)])
                for k in range(n)]  # type: ignore[misc]

    if shape == "square":
        pts = [(math.cos(t), math.sin(t), r) for t in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = ring_pts(3, [r])
    elif shape == "hexagon":
        pts = ring_pts(6, [r], start=0.0)
    elif shape == "star":
        pts = ring_pts(10, [r, r * 0.45])
    elif shape == "cross":
        w = 0.34
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                (-w, -w)]
        pts = [(x / math.hypot(x, y), y / math.hypot(x, y), r * math.hypot(x, y) / math.sqrt(2) * 1.25)
               for x, y in base]
    elif shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) - 1.5
            n = math.hypot(x, y) or 1.0
            pts.append((x / n, y / n, r * n / 17.0))
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    out = []
    for ux, uy, rad in pts:
        x, y = ux * rad, uy * rad
        out.append((cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)))
    return out


def _shape_mask(obj: ToyObject, size: int) -> np.ndarray:
    """HxW bool mask of the full (unoccluded) object."""
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    cx, cy = obj.centre
    r = obj.size / 2
    if obj.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif obj.shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        ri = r * 0.55
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        d.polygon(_polygon(obj.shape, cx, cy, r, obj.angle), fill=1)
    return np.asarray(m, dtype=bool)


def paint_object(obj: ToyObject, instance_id: int, image: np.ndarray, semantic: np.ndarray,
                 instances: np.ndarray, rng: np.random.Generator) -> None:
    """Draw ``obj`` over the layers in place (shaded fill with noise): image HxWx3 float32, semantic and
    instances HxW uint8 (``instance_id`` written where the object is)."""
    n = image.shape[0]
    mask = _shape_mask(obj, n)
    shade = 1.0 + 0.12 * (np.linspace(-1, 1, n)[None, :] * math.cos(obj.angle) +
                          np.linspace(-1, 1, n)[:, None] * math.sin(obj.angle))
    colour_rgb = np.array(RGB[obj.colour], np.float32) + rng.normal(0, 8, 3)
    fill = np.clip(colour_rgb[None, None] * shade[..., None] + rng.normal(0, 4, (n, n, 1)), 0, 255)
    image[mask] = fill[mask]
    semantic[mask] = CLASSES.index(obj.shape)
    instances[mask] = instance_id


# ----------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class ToyWorldConfig:
    size: int = 96  # image side, pixels (96-128 by default; any >= 32 works)
    min_objects: int = 1
    max_objects: int = 5
    min_scale: float = 0.08  # object size as a fraction of the side
    max_scale: float = 0.45
    min_visible: int = 12  # objects whose visible area falls below this many pixels are dropped


class ToyWorld:
    """Deterministic scene generator: ``ToyWorld(split, seed)[i]`` is always the same :class:`Scene`."""

    def __init__(self, split: str = "train", seed: int = 0, config: ToyWorldConfig | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown ToyWorld split {split!r}; choose one of {sorted(SPLITS)}")
        self.split, self.seed, self.config = split, int(seed), config or ToyWorldConfig()
        if self.config.size < 32:
            raise ValueError(f"ToyWorld size {self.config.size} is too small; use at least 32 pixels")
        spec = SPLITS[split]
        self.combos = [(c, s) for s in spec["shapes"] for c in COLOURS if (c, s) not in spec["exclude_combos"]]

    def __getitem__(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, _SPLIT_SEED[self.split], int(index)])
        return self._make(rng)

    def _make(self, rng: np.random.Generator) -> Scene:
        cfg, n = self.config, self.config.size
        stuff = STUFF[rng.integers(len(STUFF))]
        image = _texture(stuff, n, rng)
        semantic = np.full((n, n), CLASSES.index(stuff), np.uint8)
        instances = np.zeros((n, n), np.uint8)
        objects: list[ToyObject] = []
        for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
            colour, shape = self.combos[rng.integers(len(self.combos))]
            size = float(rng.uniform(cfg.min_scale, cfg.max_scale)) * n
            cx, cy = (float(v) for v in rng.uniform(size / 2, n - size / 2, 2))
            obj = ToyObject(shape, colour, (cx, cy), size, float(rng.uniform(0, 360)))
            paint_object(obj, len(objects) + 1, image, semantic, instances, rng)
            objects.append(obj)
        return self.compose(stuff, image, semantic, instances, objects, rng)

    def compose(self, stuff: str, image: np.ndarray, semantic: np.ndarray, instances: np.ndarray,
                objects: list[ToyObject], rng: np.random.Generator) -> Scene:
        """A :class:`Scene` from painted layers: measure visible parts, add pixel noise, caption, expressions."""
        objects = self._finalise(objects, instances)
        image_u8 = np.clip(image + rng.normal(0, 2.0, image.shape), 0, 255).astype(np.uint8)
        scene = Scene(image_u8, semantic, instances, stuff, objects, caption(objects, stuff))
        scene.expressions = referring_expressions(objects)
        return scene

    def _finalise(self, objects: list[ToyObject], instances: np.ndarray) -> list[ToyObject]:
        """Measure visible parts; drop (repaint as stuff) objects that are almost fully occluded."""
        kept: list[ToyObject] = []
        remap = np.zeros(256, np.uint8)
        for k, obj in enumerate(objects, start=1):
            ys, xs = np.nonzero(instances == k)
            if len(xs) < self.config.min_visible:
                continue  # a sliver: its pixels keep their shape label but it is no referable instance
            obj.area = int(len(xs))
            obj.bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            obj.centroid = (float(xs.mean()), float(ys.mean()))
            kept.append(obj)
            remap[k] = len(kept)
        instances[:] = remap[instances]
        return kept

    def labels(self) -> list[str]:
        """The segmentation label set of this split: its shapes plus every stuff class."""
        return list(SPLITS[self.split]["shapes"]) + list(STUFF)


# Evaluation label sets: name -> (ToyWorld split, label set). Read by training (IFSeg's held-out check) and
# by `edgeseg eval` (the segmentation evaluation documents what each measures).
EVAL_SPLITS = {  # name -> (ToyWorld split, label set)
    "seen": ("seen", list(SEEN_SHAPES) + list(STUFF)),
    "unseen": ("unseen", list(UNSEEN_SHAPES) + list(STUFF)),
    "generalized": ("all", list(SHAPES) + list(STUFF)),
}


def label_lut(labels: list[str] | tuple[str, ...]) -> np.ndarray:
    """256-entry lookup: semantic value (index in CLASSES) -> index in ``labels``, IGNORE for other classes.
    ``label_lut(labels)[scene.semantic]`` gives the ground truth for a label set."""
    lut = np.full(256, IGNORE, np.uint8)
    for i, name in enumerate(labels):
        lut[CLASSES.index(name)] = i
    return lut


# ----------------------------------------------------------------------------------------------- language
def caption(objects: list[ToyObject], stuff: str) -> str:
    """'a red circle, a green star and a blue ring on sand'."""
    names = [f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.name}" for o in objects]
    if not names:
        return f"{stuff}"
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on {stuff}"


def _position_word(objs: list[ToyObject], i: int) -> list[str]:
    """Direction words that single out ``objs[i]`` within ``objs`` by a clear margin."""
    words = []
    xs = [o.centroid[0] for o in objs]
    ys = [o.centroid[1] for o in objs]
    margin = 6.0
    for word, vals, sign in (("left", xs, -1), ("right", xs, 1), ("top", ys, -1), ("bottom", ys, 1)):
        others = [sign * v for j, v in enumerate(vals) if j != i]
        if others and sign * vals[i] > max(others) + margin:
            words.append(word)
    return words


def referring_expressions(objects: list[ToyObject]) -> list[Expression]:
    """Unambiguous referring expressions for a scene, each with its target object index."""
    out: list[Expression] = []
    names = [o.name for o in objects]
    for i, o in enumerate(objects):
        if names.count(o.name) == 1:
            out.append(Expression(f"the {o.name}", i, "colour_shape"))
        same_shape = [j for j, p in enumerate(objects) if p.shape == o.shape]
        if len(same_shape) > 1:
            group = [objects[j] for j in same_shape]
            for w in _position_word(group, same_shape.index(i)):
                phrase = {"left": "on the left", "right": "on the right", "top": "at the top",
                          "bottom": "at the bottom"}[w]
                out.append(Expression(f"the {o.shape} {phrase}", i, "position"))
        for w in _position_word(objects, i):
            out.append(Expression(f"the {w}most object", i, "position"))
    if len(objects) >= 2:
        areas = [o.area for o in objects]
        order = np.argsort(areas)
        if areas[order[-1]] > 1.3 * areas[order[-2]]:
            out.append(Expression("the largest object", int(order[-1]), "size"))
        if areas[order[1]] > 1.3 * areas[order[0]]:
            out.append(Expression("the smallest object", int(order[0]), "size"))
        if len(objects) == 3:
            mid = int(np.argsort([p.centroid[0] for p in objects])[1])
            xs = sorted(p.centroid[0] for p in objects)
            if xs[1] - xs[0] > 6 and xs[2] - xs[1] > 6:
                out.append(Expression("the object in the middle", mid, "position"))
        for i, o in enumerate(objects):  # relations to a uniquely named anchor
            for j, a in enumerate(objects):
                if i == j or names.count(a.name) != 1 or sum(p.shape == o.shape for p in objects) != 1:
                    continue
                dx, dy = o.centroid[0] - a.centroid[0], o.centroid[1] - a.centroid[1]
                if abs(dx) > abs(dy) + 6:
                    rel = "left of" if dx < 0 else "right of"
                elif abs(dy) > abs(dx) + 6:
                    rel = "above" if dy < 0 else "below"
                else:
                    continue
                out.append(Expression(f"the {o.shape} {rel} the {a.name}", i, "relation"))
                break
    return out
