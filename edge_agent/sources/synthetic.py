"""Deterministic synthetic scenes: saturated shapes over a cluttered, dull background, with exact boxes.

The generator is shared by the agent (the ``synthetic[:SEED]`` demo camera) and by ``cloud_trainer``
(training and evaluation datasets), so everything here is a pure function of ``(seed, index)`` and,
for video, of the frame number ``t``:

* ``SceneGenerator(width, height, seed, ...).render(index)`` -> ``(image_bgr, truth)``: one still
  scene; identical bytes for the same arguments on every machine.
* ``SceneGenerator.scene(index)`` -> ``MovingScene``; ``MovingScene.render(t)`` is frame ``t`` of a
  clip in which the shapes move smoothly, bounce off the frame's edges and off each other, and
  squares/triangles turn slowly. ``render(index)`` is frame 0 of ``scene(index)``.

Reproducibility: random numbers come only from ``numpy.random.Generator(PCG64)`` seeded by
``SeedSequence([seed, index])``; the background is built with bit-exact OpenCV operations
(``INTER_LINEAR_EXACT`` resizes, drawing with integer fixed-point coordinates) and integer numpy
arithmetic; the motion is a fixed sequence of IEEE-754 double operations on Python floats. Nothing
depends on the clock.

Ground truth: each ``GroundTruth.box`` is the tight box, in pixel-edge coordinates
``(xmin, ymin, xmax, ymax)`` with ``0 <= xmin < xmax <= width``, of the pixels of that shape that are
visible in the frame (after clipping to the frame and occlusion by shapes drawn over it). It is
measured from a label map drawn with exactly the same calls as the image, so it is exact. A shape
with less than ``min_visible`` of its area visible gets no ground truth (this needs an unusual
pile-up; placement and motion keep occlusion well below half of a shape).
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import SourceError
from .base import Frame, FrameSource, GroundTruth

SHAPE_LABELS: Tuple[str, ...] = ("circle", "square", "triangle")

Color = Tuple[int, int, int]

_SHIFT = 4  # drawing uses fixed-point coordinates with 4 fractional bits (1/16 px)
_ONE = 1 << _SHIFT
_MAX_TILT = math.radians(20.0)  # squares lean at most this much either way
_EDGE_SLACK = 0.25  # fraction of a shape's circumradius that may leave the frame
_PLACE_TRIES = 60
_CHECKPOINT_EVERY = 512
_MAX_OBJECTS = 64


def _fx(v: float) -> int:
    """A pixel coordinate as OpenCV fixed point (round half up, identical everywhere)."""
    return int(math.floor(v * _ONE + 0.5))


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene, as it is at frame 0, and how it moves.

    ``size`` is the circle's diameter, the square's side or the equilateral triangle's side, in
    pixels. Its orientation at frame ``t`` is ``angle + spin*t + tilt_amp*sin(tilt_freq*t +
    tilt_phase)`` (radians): squares rock within +-20 degrees, triangles spin, circles do not turn.
    """

    label: str
    class_id: int
    size: float
    color: Color  # BGR
    x: float  # centre at frame 0, pixels
    y: float
    vx: float  # pixels per frame
    vy: float
    angle: float = 0.0
    spin: float = 0.0
    tilt_amp: float = 0.0
    tilt_freq: float = 0.0
    tilt_phase: float = 0.0

    @property
    def radius(self) -> float:
        """Circumradius: the disc that contains the shape at any orientation."""
        if self.label == "circle":
            return self.size / 2.0
        if self.label == "square":
            return self.size / math.sqrt(2.0)
        return self.size / math.sqrt(3.0)

    @property
    def area(self) -> float:
        if self.label == "circle":
            return math.pi * self.size * self.size / 4.0
        if self.label == "square":
            return self.size * self.size
        return math.sqrt(3.0) / 4.0 * self.size * self.size

    def angle_at(self, t: int) -> float:
        a = self.angle + self.spin * t
        if self.tilt_amp:
            a += self.tilt_amp * math.sin(self.tilt_freq * t + self.tilt_phase)
        return a

    def polygon(self, x: float, y: float, angle: float) -> np.ndarray:
        """Vertices (fixed point, ``_SHIFT`` fractional bits) of a square or triangle centred at x, y."""
        if self.label == "square":
            start, n = angle + math.pi / 4.0, 4
        else:  # triangle, pointing up at angle 0
            start, n = angle - math.pi / 2.0, 3
        r = self.radius
        pts = []
        for k in range(n):
            a = start + 2.0 * math.pi * k / n
            pts.append((_fx(x + r * math.cos(a)), _fx(y + r * math.sin(a))))
        return np.array(pts, dtype=np.int32)


def _draw_shape(
    image: np.ndarray, labels: np.ndarray, obj: SceneObject, x: float, y: float, angle: float, k: int
) -> None:
    """Draw ``obj`` into the image and, with value ``k``, into the label map: the same pixels."""
    if obj.label == "circle":
        c, r = (_fx(x), _fx(y)), _fx(obj.size / 2.0)
        cv2.circle(image, c, r, obj.color, -1, lineType=cv2.LINE_8, shift=_SHIFT)
        cv2.circle(labels, c, r, k, -1, lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        pts = [obj.polygon(x, y, angle)]
        cv2.fillPoly(image, pts, obj.color, lineType=cv2.LINE_8, shift=_SHIFT)
        cv2.fillPoly(labels, pts, k, lineType=cv2.LINE_8, shift=_SHIFT)


def _separation(a: SceneObject, b: SceneObject, max_overlap: float) -> float:
    """Closest allowed distance between two centres: circumscribed discs may overlap by
    ``max_overlap`` of the smaller radius (with 0, they keep a 2 px gap)."""
    ra, rb = a.radius, b.radius
    if max_overlap <= 0.0:
        return ra + rb + 2.0
    return ra + rb - max_overlap * min(ra, rb)


def _bounds(obj: SceneObject, extent: int) -> Tuple[float, float]:
    """Range of the centre along an axis of ``extent`` pixels."""
    lo = obj.radius * (1.0 - _EDGE_SLACK)
    hi = extent - lo
    if hi < lo:
        lo = hi = extent / 2.0
    return lo, hi


class MovingScene:
    """A background and shapes that move; ``render(t)`` is frame ``t`` (a pure function of t).

    Positions advance by a deterministic step (move, reflect off the frame's edges, elastic
    collisions between the shapes' circumscribed discs, which may interpenetrate by at most
    ``max_overlap`` of the smaller radius). Sequential rendering costs one step per frame; random
    access replays from the nearest checkpoint.
    """

    def __init__(
        self,
        width: int,
        height: int,
        background: np.ndarray,
        objects: Sequence[SceneObject],
        *,
        max_overlap: float = 0.5,
        noise: Optional[Tuple[np.ndarray, np.ndarray]] = None,
        min_visible: float = 0.2,
    ) -> None:
        if background.shape != (height, width, 3) or background.dtype != np.uint8:
            raise ValueError(f"background must be uint8 {height}x{width}x3, got {background.shape}")
        if len(objects) > _MAX_OBJECTS:
            raise ValueError(f"at most {_MAX_OBJECTS} objects per scene")
        self.width = width
        self.height = height
        self.objects: Tuple[SceneObject, ...] = tuple(objects)
        self.max_overlap = max_overlap
        self.min_visible = min_visible
        self._clean = background
        self._noise = noise
        bg = background.copy()
        self._apply_noise(bg)
        bg.setflags(write=False)
        self.background: np.ndarray = bg  # what a frame shows where no shape is drawn
        state = [[o.x, o.y, o.vx, o.vy] for o in self.objects]
        self._t = 0
        self._state = state
        self._checkpoints: Dict[int, List[List[float]]] = {0: [list(s) for s in state]}

    # -- motion ------------------------------------------------------------------------------

    def _step(self) -> None:
        objs, st = self.objects, self._state
        for obj, s in zip(objs, st):
            for axis, extent in ((0, self.width), (1, self.height)):
                lo, hi = _bounds(obj, extent)
                p = s[axis] + s[axis + 2]
                if p < lo:
                    p = lo + (lo - p)
                    s[axis + 2] = abs(s[axis + 2])
                elif p > hi:
                    p = hi - (p - hi)
                    s[axis + 2] = -abs(s[axis + 2])
                s[axis] = min(max(p, lo), hi)
        n = len(objs)
        for i in range(n):
            for j in range(i + 1, n):
                si, sj = st[i], st[j]
                dx, dy = sj[0] - si[0], sj[1] - si[1]
                dmin = _separation(objs[i], objs[j], self.max_overlap)
                d2 = dx * dx + dy * dy
                if d2 >= dmin * dmin:
                    continue
                d = math.sqrt(d2)
                if d > 1e-9:
                    nx, ny = dx / d, dy / d
                else:
                    nx, ny = 1.0, 0.0
                rel = (sj[2] - si[2]) * nx + (sj[3] - si[3]) * ny
                if rel < 0.0:  # approaching: equal masses swap their normal velocities
                    si[2] += rel * nx
                    si[3] += rel * ny
                    sj[2] -= rel * nx
                    sj[3] -= rel * ny
                push = (dmin - d) / 2.0
                si[0] -= nx * push
                si[1] -= ny * push
                sj[0] += nx * push
                sj[1] += ny * push
        self._t += 1
        if self._t % _CHECKPOINT_EVERY == 0 and self._t not in self._checkpoints:
            self._checkpoints[self._t] = [list(s) for s in st]

    def centers(self, t: int) -> List[Tuple[float, float]]:
        """The shapes' centres at frame ``t`` (pixels, may lie slightly outside the frame)."""
        if t < 0:
            raise ValueError(f"frame number must be >= 0, got {t}")
        if t < self._t:
            base = max(k for k in self._checkpoints if k <= t)
            self._t = base
            self._state = [list(s) for s in self._checkpoints[base]]
        while self._t < t:
            self._step()
        return [(s[0], s[1]) for s in self._state]

    # -- drawing -----------------------------------------------------------------------------

    def _apply_noise(self, image: np.ndarray) -> None:
        if self._noise is not None:
            cv2.add(image, self._noise[0], dst=image)
            cv2.subtract(image, self._noise[1], dst=image)

    def render(self, t: int = 0) -> Tuple[np.ndarray, List[GroundTruth]]:
        """Frame ``t``: a new BGR uint8 image and the ground truth of the visible shapes."""
        centers = self.centers(t)
        image = self._clean.copy()
        labels = np.zeros((self.height, self.width), dtype=np.uint8)
        for k, (obj, (x, y)) in enumerate(zip(self.objects, centers), start=1):
            _draw_shape(image, labels, obj, x, y, obj.angle_at(t), k)
        self._apply_noise(image)
        truth: List[GroundTruth] = []
        for k, (obj, (x, y)) in enumerate(zip(self.objects, centers), start=1):
            r = obj.radius + 2.0
            x0, y0 = max(0, int(math.floor(x - r))), max(0, int(math.floor(y - r)))
            x1 = min(self.width, int(math.ceil(x + r)) + 1)
            y1 = min(self.height, int(math.ceil(y + r)) + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            mask = labels[y0:y1, x0:x1] == k
            visible = int(np.count_nonzero(mask))
            if visible == 0 or visible < self.min_visible * obj.area:
                continue
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            box = (
                float(x0 + cols[0]),
                float(y0 + rows[0]),
                float(x0 + cols[-1] + 1),
                float(y0 + rows[-1] + 1),
            )
            truth.append(GroundTruth(obj.label, obj.class_id, box))
        return image, truth


# -- random scene construction ---------------------------------------------------------------


def _dull_color(rng: np.random.Generator, lo: int, hi: int, tint: int = 12) -> Color:
    """A grey with a faint tint: never confusable with the shapes' saturated fills."""
    v = int(rng.integers(lo, hi + 1))
    t = rng.integers(-tint, tint + 1, size=3)
    b, g, r = (min(255, max(0, v + int(c))) for c in t)
    return (b, g, r)


def _shape_color(rng: np.random.Generator) -> Color:
    h, s, v = float(rng.random()), float(rng.uniform(0.65, 1.0)), float(rng.uniform(0.55, 1.0))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (int(math.floor(b * 255 + 0.5)), int(math.floor(g * 255 + 0.5)), int(math.floor(r * 255 + 0.5)))


def _background(rng: np.random.Generator, width: int, height: int, textured: bool) -> np.ndarray:
    base = _dull_color(rng, 70, 185, tint=10)
    if not textured:
        return np.full((height, width, 3), base, dtype=np.uint8)
    # Smoothed noise and gradients: a coarse-to-fine pyramid of random offsets, each level
    # upsampled with the bit-exact bilinear resize.
    levels = (
        ((2, 2), 40),
        ((max(2, width // 100), max(2, height // 100)), 24),
        ((max(2, width // 32), max(2, height // 32)), 12),
        ((max(2, width // 8), max(2, height // 8)), 6),
    )
    field = np.empty((1, 1, 3), dtype=np.uint8)
    field[...] = base
    for (gw, gh), amp in levels:
        up = cv2.resize(field, (gw, gh), interpolation=cv2.INTER_LINEAR_EXACT).astype(np.int16)
        lum = rng.integers(-amp, amp + 1, size=(gh, gw, 1), dtype=np.int16)
        tint = rng.integers(-amp // 4, amp // 4 + 1, size=(gh, gw, 3), dtype=np.int16)
        field = np.clip(up + lum + tint, 0, 255).astype(np.uint8)
    bg = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR_EXACT)
    # Clutter: dull blobs, lines and zigzags.
    short = min(width, height)
    for _ in range(int(rng.integers(2, 7))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (
            int(rng.integers(short // 30 + 1, short // 7 + 2)),
            int(rng.integers(short // 30 + 1, short // 7 + 2)),
        )
        angle = int(rng.integers(0, 180))
        cv2.ellipse(bg, center, axes, angle, 0, 360, _dull_color(rng, 40, 220), -1, cv2.LINE_8)
    for _ in range(int(rng.integers(3, 11))):
        # Endpoints inside the frame: OpenCV versions clip thick lines that leave it differently.
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        thick = int(rng.integers(1, 4))
        cv2.line(bg, p1, p2, _dull_color(rng, 30, 230), thick, cv2.LINE_8)
    for _ in range(int(rng.integers(0, 3))):
        n = int(rng.integers(3, 7))
        xs = rng.integers(0, width, size=n)
        ys = rng.integers(0, height, size=n)
        pts = np.stack([xs, ys], axis=1).astype(np.int32)
        cv2.polylines(bg, [pts], False, _dull_color(rng, 30, 230), int(rng.integers(1, 3)), cv2.LINE_8)
    return bg


class SceneGenerator:
    """Random scenes of ``SHAPE_LABELS`` shapes, a pure function of ``(seed, index)``.

    :param width, height: frame size in pixels.
    :param seed: any non-negative integer.
    :param min_objects, max_objects: shapes per scene (uniform); a shape that cannot be placed
        within the overlap rule even after shrinking is left out, so a crowded scene may hold fewer.
    :param scale_range: shape size as a fraction of the frame's short side (circle diameter,
        square or triangle side), uniform in this range.
    :param allow_overlap: when False shapes never touch; when True their circumscribed discs may
        overlap by ``max_overlap`` of the smaller radius (larger shapes are drawn first, so the
        occluded part of any shape stays well below half).
    :param speed_range: speed in the video mode, fraction of the short side per frame.
    :param textured: a cluttered textured background (True) or a plain one (False).
    :param noise: amplitude of the fixed per-pixel grain over the whole frame (0 for none).
    :param min_visible: a shape with less than this fraction of its area visible gets no truth.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        seed: int = 0,
        *,
        min_objects: int = 1,
        max_objects: int = 4,
        scale_range: Tuple[float, float] = (0.08, 0.45),
        allow_overlap: bool = True,
        max_overlap: float = 0.5,
        speed_range: Tuple[float, float] = (0.004, 0.012),
        textured: bool = True,
        noise: int = 6,
        min_visible: float = 0.2,
    ) -> None:
        if width < 16 or height < 16:
            raise ValueError(f"frame must be at least 16x16, got {width}x{height}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= min_objects <= max_objects <= _MAX_OBJECTS:
            raise ValueError(f"need 0 <= min_objects <= max_objects <= {_MAX_OBJECTS}")
        if not 0.0 < scale_range[0] <= scale_range[1] <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1, got {scale_range}")
        if not 0.0 <= max_overlap < 1.0:
            raise ValueError(f"max_overlap must be in [0, 1), got {max_overlap}")
        if not 0.0 <= speed_range[0] <= speed_range[1]:
            raise ValueError(f"speed_range must satisfy 0 <= lo <= hi, got {speed_range}")
        if not 0 <= noise <= 64:
            raise ValueError(f"noise must be in [0, 64], got {noise}")
        self.width = int(width)
        self.height = int(height)
        self.seed = int(seed)
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.allow_overlap = allow_overlap
        self.max_overlap = float(max_overlap) if allow_overlap else 0.0
        self.speed_range = (float(speed_range[0]), float(speed_range[1]))
        self.textured = textured
        self.noise = int(noise)
        self.min_visible = float(min_visible)

    def render(self, index: int) -> Tuple[np.ndarray, List[GroundTruth]]:
        """Still scene ``index``: a BGR uint8 HxWx3 image and its ground truth (frame 0 of
        ``scene(index)``)."""
        return self.scene(index).render(0)

    def scene(self, index: int) -> MovingScene:
        """Scene ``index`` as a clip: ``scene(index).render(t)`` for frames t = 0, 1, 2, ..."""
        if index < 0:
            raise ValueError(f"scene index must be >= 0, got {index}")
        bg_ss, obj_ss, noise_ss = np.random.SeedSequence([self.seed, int(index)]).spawn(3)
        w, h = self.width, self.height
        background = _background(np.random.Generator(np.random.PCG64(bg_ss)), w, h, self.textured)
        noise: Optional[Tuple[np.ndarray, np.ndarray]] = None
        if self.noise:
            rng = np.random.Generator(np.random.PCG64(noise_ss))
            grain = rng.integers(0, self.noise + 1, size=(2, h, w, 1), dtype=np.uint8)
            noise = (np.repeat(grain[0], 3, axis=2), np.repeat(grain[1], 3, axis=2))
        objects = self._objects(np.random.Generator(np.random.PCG64(obj_ss)))
        return MovingScene(
            w,
            h,
            background,
            objects,
            max_overlap=self.max_overlap,
            noise=noise,
            min_visible=self.min_visible,
        )

    def _objects(self, rng: np.random.Generator) -> List[SceneObject]:
        w, h = self.width, self.height
        short = min(w, h)
        drafts: List[SceneObject] = []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            # Every object consumes the same draws whatever its label.
            cid = int(rng.integers(0, len(SHAPE_LABELS)))
            size = max(4.0, float(rng.uniform(*self.scale_range)) * short)
            color = _shape_color(rng)
            speed = float(rng.uniform(*self.speed_range)) * short
            heading = float(rng.uniform(0.0, 2.0 * math.pi))
            turn = float(rng.uniform(-math.pi, math.pi))
            spin = float(rng.uniform(0.005, 0.03)) * (1.0 if rng.random() < 0.5 else -1.0)
            tilt_amp = float(rng.uniform(0.0, _MAX_TILT))
            tilt_freq = float(rng.uniform(0.01, 0.05))
            tilt_phase = float(rng.uniform(0.0, 2.0 * math.pi))
            label = SHAPE_LABELS[cid]
            drafts.append(
                SceneObject(
                    label=label,
                    class_id=cid,
                    size=size,
                    color=color,
                    x=0.0,
                    y=0.0,
                    vx=speed * math.cos(heading),
                    vy=speed * math.sin(heading),
                    angle=turn if label == "triangle" else 0.0,
                    spin=spin if label == "triangle" else 0.0,
                    tilt_amp=tilt_amp if label == "square" else 0.0,
                    tilt_freq=tilt_freq if label == "square" else 0.0,
                    tilt_phase=tilt_phase if label == "square" else 0.0,
                )
            )
        # Larger shapes first: they are drawn underneath, so occlusion eats into the big ones.
        drafts.sort(key=lambda o: -o.size)
        placed: List[SceneObject] = []
        for obj in drafts:
            cand = obj
            for _shrink in range(4):
                xlo, xhi = _bounds(cand, w)
                ylo, yhi = _bounds(cand, h)
                spot: Optional[Tuple[float, float]] = None
                for _ in range(_PLACE_TRIES):
                    x, y = float(rng.uniform(xlo, xhi)), float(rng.uniform(ylo, yhi))
                    if all(
                        (p.x - x) ** 2 + (p.y - y) ** 2 >= _separation(p, cand, self.max_overlap) ** 2
                        for p in placed
                    ):
                        spot = (x, y)
                        break
                if spot is not None:
                    placed.append(dataclasses.replace(cand, x=spot[0], y=spot[1]))
                    break
                cand = dataclasses.replace(cand, size=cand.size * 0.75)
        return placed


def draw_truth(image: np.ndarray, truth: Sequence[GroundTruth], color: Color = (255, 255, 255)) -> np.ndarray:
    """A copy of ``image`` with the boxes and labels drawn (for previews and dataset inspection)."""
    out = image.copy()
    for gt in truth:
        x0, y0, x1, y1 = (int(round(v)) for v in gt.box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), color, 1, cv2.LINE_8)
        cv2.putText(
            out, gt.label, (x0 + 2, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA
        )
    return out


_SPEC_RE = re.compile(r"^synthetic(?::(\d+))?$")


def parse_synthetic_spec(spec: str) -> int:
    """The seed of ``synthetic`` (0) or ``synthetic:SEED``; SourceError for anything else."""
    m = _SPEC_RE.match(spec.strip())
    if m is None:
        raise SourceError(
            f"bad synthetic source {spec!r}: expected 'synthetic' or 'synthetic:SEED' (SEED >= 0)"
        )
    return int(m.group(1)) if m.group(1) is not None else 0


class SyntheticSource(FrameSource):
    """A camera that films ``SceneGenerator(width, height, seed).scene(0)``: frames carry truth.

    Infinite unless ``frames`` is given; with ``fps`` it paces itself like a real camera (sleeps
    until each frame is due), otherwise it renders as fast as it is asked. ``open()`` restarts the
    clip at frame 0.
    """

    def __init__(
        self,
        spec: str = "synthetic",
        width: int = 640,
        height: int = 480,
        fps: Optional[float] = None,
        frames: Optional[int] = None,
        generator: Optional[SceneGenerator] = None,
    ) -> None:
        self.spec = spec
        seed = parse_synthetic_spec(spec)
        if fps is not None and fps <= 0:
            raise SourceError(f"{spec}: fps must be positive, got {fps}")
        if frames is not None and frames < 0:
            raise SourceError(f"{spec}: frames must be >= 0, got {frames}")
        self.fps = fps
        self.frames = frames
        self.generator = generator if generator is not None else SceneGenerator(width, height, seed)
        self._scene: Optional[MovingScene] = None
        self._t = 0
        self._due = 0.0

    def open(self) -> None:
        if self._scene is None:
            self._scene = self.generator.scene(0)
        self._t = 0
        self._due = time.monotonic()

    def read(self) -> Optional[Frame]:
        if self._scene is None:
            raise SourceError(f"{self.spec}: read() before open()")
        if self.frames is not None and self._t >= self.frames:
            return None
        if self.fps:
            now = time.monotonic()
            if self._due > now:
                time.sleep(self._due - now)
            elif now - self._due > 1.0 / self.fps:
                self._due = now  # fell behind: do not burst to catch up
            self._due += 1.0 / self.fps
        image, truth = self._scene.render(self._t)
        frame = Frame(image=image, index=self._t, timestamp=time.time(), source=self.spec, truth=truth)
        self._t += 1
        return frame

    def close(self) -> None:
        self._scene = None
