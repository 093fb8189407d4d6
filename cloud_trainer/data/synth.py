"""Synthetic datasets: stills of the agent's ``SceneGenerator`` (saturated circles, squares and
triangles on cluttered textured backgrounds, varied in scale, colour and overlap), written in any
of the writers' formats. A pure function of its arguments: the same seed gives the same images and
annotations on every machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import cv2

from edge_agent.sources.synthetic import SHAPE_LABELS, SceneGenerator

from ..errors import DatasetError
from .dataset import Annotation, Dataset, Sample
from .parsing import PathLike
from .writers import WRITE_FORMATS, check_empty, image_folder, write_annotations

IMAGE_FORMATS = ("jpg", "png")


def synthesize(
    out_dir: PathLike,
    images: int,
    seed: int,
    fmt: str = "voc",
    width: int = 640,
    height: int = 480,
    *,
    image_format: str = "jpg",
    **generator_options: Any,
) -> Dataset:
    """Render scenes ``0 .. images-1`` of ``SceneGenerator(width, height, seed,
    **generator_options)`` into the new folder ``out_dir``: JPEG (quality 95) or PNG images named
    ``000000.jpg`` ..., and their annotations in ``fmt``. Returns the dataset as written."""
    if fmt not in WRITE_FORMATS:
        raise DatasetError(f"cannot write format {fmt!r} (formats: {', '.join(WRITE_FORMATS)})")
    if image_format not in IMAGE_FORMATS:
        raise DatasetError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if images < 1:
        raise DatasetError(f"the number of images must be at least 1, got {images}")
    try:
        generator = SceneGenerator(width, height, seed, **generator_options)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"synthetic scenes: {e}") from e
    out = Path(out_dir)
    check_empty(out)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    digits = max(6, len(str(images - 1)))
    samples: List[Sample] = []
    try:
        folder = image_folder(out, fmt)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images):
            image, truth = generator.render(i)
            path = folder / f"{i:0{digits}d}.{image_format}"
            if not cv2.imwrite(str(path), image, params):
                raise DatasetError(f"{path}: cannot write the image")
            boxes = tuple(Annotation(gt.class_id, *gt.box) for gt in truth)
            samples.append(Sample(image=path, width=generator.width, height=generator.height, boxes=boxes))
        dataset = Dataset(list(SHAPE_LABELS), samples, f"synth:{out} (seed {seed}, {fmt})")
        write_annotations(dataset, out, fmt)
    except OSError as e:
        raise DatasetError(f"{e.filename or out}: cannot write ({e.strerror or e})") from e
    return dataset
