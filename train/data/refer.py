"""ToyWorld referring split: scenes built around one target with deliberate distractors.

Every sample is a scene plus one referring expression whose target is a visible object. Kinds (cycled by
index so any ``n`` covers them evenly):

- ``colour``: the target has a twin of the same shape in another colour ("the red circle" beside a blue one).
- ``shape``: the target has a twin of the same colour with another shape ("the red circle" beside a red star).
- ``twins``: two objects of the same shape and colour, one left of the other ("the circle on the left").
- ``twins_colour``: same shape, other colour, left/right, named by both ("the red circle on the right").

Each scene also gets 0-2 random extra objects that share neither the target's colour nor its shape, so the
expression stays unambiguous. Objects do not overlap (placement by rejection), so the target is fully visible.
A pure function of ``(seed, index, config)`` like :class:`~edgeseg.train.data.toyworld.ToyWorld`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .toyworld import (COLOURS, SEEN_SHAPES, STUFF, CLASSES, Expression, Scene, ToyObject, ToyWorld,
                       ToyWorldConfig, _texture, paint_object)

REFER_KINDS = ("colour", "shape", "twins", "twins_colour")
_REFER_SEED = 5_000_011


@dataclass
class ReferSample:
    scene: Scene
    expression: Expression
    kind: str  # one of REFER_KINDS

    @property
    def target_mask(self) -> np.ndarray:
        """H x W bool mask of the referred object."""
        return self.scene.instance_mask(self.expression.target)


class ReferWorld:
    """``ReferWorld(seed)[i]`` -> :class:`ReferSample`; shapes from the seen set, sizes 18-32% of the side."""

    def __init__(self, seed: int = 0, config: ToyWorldConfig | None = None, min_scale: float = 0.18,
                 max_scale: float = 0.32, shapes: tuple[str, ...] = SEEN_SHAPES):
        self.seed, self.config = int(seed), config or ToyWorldConfig()
        self.min_scale, self.max_scale, self.shapes = min_scale, max_scale, tuple(shapes)
        self._world = ToyWorld("seen", seed, self.config)  # reuses its measuring and composing

    def __getitem__(self, index: int) -> ReferSample:
        rng = np.random.default_rng([self.seed, _REFER_SEED, int(index)])
        kind = REFER_KINDS[int(index) % len(REFER_KINDS)]
        for _ in range(20):  # re-draw the rare layout where the target got dropped or lost its side
            sample = self._make(rng, kind)
            if sample is not None:
                return sample
        raise RuntimeError(f"could not lay out referring scene {index} (kind {kind})")  # pragma: no cover

    def _make(self, rng: np.random.Generator, kind: str) -> ReferSample | None:
        n = self.config.size
        colour, shape = str(rng.choice(COLOURS)), str(rng.choice(self.shapes))
        other_colour = str(rng.choice([c for c in COLOURS if c != colour]))
        other_shape = str(rng.choice([s for s in self.shapes if s != shape]))
        specs = [(colour, shape)]
        if kind == "colour":
            specs.append((other_colour, shape))
        elif kind == "shape":
            specs.append((colour, other_shape))
        elif kind == "twins":
            specs.append((colour, shape))
        else:
            specs.append((other_colour, shape))
        extra_colours = [c for c in COLOURS if c not in (colour, other_colour)]
        extra_shapes = [s for s in self.shapes if s not in (shape, other_shape)]
        for _ in range(int(rng.integers(0, 3))):
            specs.append((str(rng.choice(extra_colours)), str(rng.choice(extra_shapes))))
        sizes = [float(rng.uniform(self.min_scale, self.max_scale)) * n for _ in specs]
        centres = _place(sizes, n, rng, left_right=kind.startswith("twins"))
        if centres is None:
            return None
        objects = [ToyObject(s, c, centre, size, float(rng.uniform(0, 360)))
                   for (c, s), centre, size in zip(specs, centres, sizes)]
        stuff = STUFF[rng.integers(len(STUFF))]
        image = _texture(stuff, n, rng)
        semantic = np.full((n, n), CLASSES.index(stuff), np.uint8)
        instances = np.zeros((n, n), np.uint8)
        for k, obj in enumerate(objects, start=1):
            paint_object(obj, k, image, semantic, instances, rng)
        target = objects[0]
        scene = self._world.compose(stuff, image, semantic, instances, objects, rng)
        if not scene.objects or scene.objects[0] is not target:
            return None
        if kind.startswith("twins"):
            side = "left" if target.centroid[0] < scene.objects[1].centroid[0] else "right"
            name = target.shape if kind == "twins" else target.name
            text = f"the {name} on the {side}"
        else:
            text = f"the {target.name}"
        return ReferSample(scene, Expression(text, 0, kind), kind)


def _place(sizes: list[float], n: int, rng: np.random.Generator, left_right: bool) -> list[tuple[float, float]] | None:
    """Centres for objects of the given sizes with no overlap (bounding circles apart); with ``left_right``
    the first two are at least 12 pixels apart horizontally. None when rejection sampling fails."""
    centres: list[tuple[float, float]] = []
    for k, size in enumerate(sizes):
        for _ in range(200):
            cx, cy = (float(v) for v in rng.uniform(size / 2, n - size / 2, 2))
            if any(np.hypot(cx - x, cy - y) < (size + s) / 2 * 1.05 for (x, y), s in zip(centres, sizes)):
                continue
            if left_right and k == 1 and abs(cx - centres[0][0]) < 12:
                continue
            centres.append((cx, cy))
            break
        else:
            return None
    return centres
