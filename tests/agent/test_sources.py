"""Frame sources: the synthetic scene generator, OpenCV capture, image globs, picamera2, parsing."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from pathlib import Path
from typing import Any, List

import cv2
import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.sources import (
    ACCEPTED_FORMS,
    Frame,
    FrameSource,
    GroundTruth,
    ImagesSource,
    OpenCVSource,
    Picamera2Source,
    SyntheticSource,
    open_source,
    opencv_capture,
)
from edge_agent.sources.synthetic import SHAPE_LABELS, SceneGenerator, draw_truth, parse_synthetic_spec

W, H = 320, 240


def _mask_bbox(mask: np.ndarray) -> List[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _check_boxes(truth: List[GroundTruth], width: int, height: int) -> None:
    for gt in truth:
        x0, y0, x1, y1 = gt.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, gt
        assert SHAPE_LABELS[gt.class_id] == gt.label


# -- synthetic generator ---------------------------------------------------------------------


def test_same_seed_and_index_give_identical_bytes() -> None:
    a, ta = SceneGenerator(W, H, seed=3).render(5)
    b, tb = SceneGenerator(W, H, seed=3).render(5)
    assert a.dtype == np.uint8 and a.shape == (H, W, 3)
    assert a.tobytes() == b.tobytes()
    assert ta == tb
    # Rendering other indices in between does not disturb anything.
    g = SceneGenerator(W, H, seed=3)
    g.render(4)
    g.render(9)
    c, tc = g.render(5)
    assert c.tobytes() == a.tobytes() and tc == ta


def test_different_seeds_and_indices_differ() -> None:
    a, _ = SceneGenerator(W, H, seed=1).render(0)
    b, _ = SceneGenerator(W, H, seed=2).render(0)
    c, _ = SceneGenerator(W, H, seed=1).render(1)
    assert a.tobytes() != b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_still_is_frame_zero_of_its_scene() -> None:
    g = SceneGenerator(W, H, seed=4)
    img, truth = g.render(2)
    img0, truth0 = g.scene(2).render(0)
    assert img.tobytes() == img0.tobytes() and truth == truth0


def test_video_frames_are_reproducible_in_any_order() -> None:
    g = SceneGenerator(W, H, seed=8)
    seq = g.scene(0)
    sequential = [seq.render(t) for t in range(0, 1200)]
    jumpy = g.scene(0)
    for t in (1100, 3, 700, 0, 1199, 513, 512):
        img, truth = jumpy.render(t)
        assert img.tobytes() == sequential[t][0].tobytes(), t
        assert truth == sequential[t][1]


def test_single_shape_box_is_tight_around_drawn_pixels() -> None:
    g = SceneGenerator(W, H, seed=11, min_objects=1, max_objects=1)
    seen = set()
    for i in range(40):
        scene = g.scene(i)
        img, truth = scene.render(0)
        assert len(truth) == 1
        seen.add(truth[0].label)
        drawn = (img != scene.background).any(axis=2)
        expect = _mask_bbox(drawn)
        assert all(abs(a - b) <= 1.0 for a, b in zip(truth[0].box, expect)), (i, truth[0], expect)
    assert seen == set(SHAPE_LABELS)


def test_boxes_tight_on_plain_background_without_noise() -> None:
    """Exact: every box edge row/column holds drawn pixels and nothing is drawn outside boxes."""
    g = SceneGenerator(W, H, seed=12, max_objects=5, textured=False, noise=0)
    for i in range(30):
        scene = g.scene(i)
        for t in (0, 37):
            img, truth = scene.render(t)
            drawn = (img != scene.background).any(axis=2)
            covered = np.zeros_like(drawn)
            for gt in truth:
                x0, y0, x1, y1 = (int(v) for v in gt.box)
                covered[y0:y1, x0:x1] = True
                sub = drawn[y0:y1, x0:x1]
                assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
            assert not (drawn & ~covered).any()


def test_boxes_inside_frame_and_labels_consistent() -> None:
    g = SceneGenerator(W, H, seed=13, max_objects=6)
    counts = []
    for i in range(60):
        _, truth = g.render(i)
        _check_boxes(truth, W, H)
        counts.append(len(truth))
    assert min(counts) >= 1 and max(counts) > 2
    scene = g.scene(1)
    for t in range(0, 2000, 25):
        _check_boxes(scene.render(t)[1], W, H)


def test_scales_and_colours_vary() -> None:
    g = SceneGenerator(640, 480, seed=14)
    sizes = [o.size / 480 for i in range(80) for o in g.scene(i).objects]
    assert min(sizes) < 0.15 and max(sizes) > 0.35
    assert all(0.05 < s <= 0.45 + 1e-9 for s in sizes)
    colours = {o.color for i in range(20) for o in g.scene(i).objects}
    assert len(colours) > 10


def test_no_overlap_mode_keeps_shapes_apart() -> None:
    g = SceneGenerator(W, H, seed=15, min_objects=3, max_objects=5, allow_overlap=False)
    for i in range(20):
        scene = g.scene(i)
        for t in (0, 50, 300):
            centres = scene.centers(t)
            objs = scene.objects
            for a in range(len(objs)):
                for b in range(a + 1, len(objs)):
                    d = math.dist(centres[a], centres[b])
                    assert d >= objs[a].radius + objs[b].radius - 1.0


def test_motion_is_small_and_nonzero() -> None:
    scene = SceneGenerator(640, 480, seed=16).scene(0)
    prev_img, prev_truth = scene.render(0)
    prev_c = scene.centers(0)
    for t in range(1, 60):
        img, truth = scene.render(t)
        c = scene.centers(t)
        steps = [math.dist(a, b) for a, b in zip(c, prev_c)]
        assert all(0.0 < s < 12.0 for s in steps), (t, steps)
        assert img.tobytes() != prev_img.tobytes()
        assert [g.label for g in truth] == [g.label for g in prev_truth]
        for a, b in zip(truth, prev_truth):
            assert max(abs(p - q) for p, q in zip(a.box, b.box)) < 16.0
        prev_img, prev_truth, prev_c = img, truth, c


def test_generator_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        SceneGenerator(W, H, seed=-1)
    with pytest.raises(ValueError):
        SceneGenerator(W, H, min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        SceneGenerator(W, H, scale_range=(0.0, 0.5))


def test_draw_truth_preview(tmp_path: Path) -> None:
    img, truth = SceneGenerator(W, H, seed=1).render(0)
    out = draw_truth(img, truth)
    assert out.shape == img.shape and out.tobytes() != img.tobytes()
    assert cv2.imwrite(str(tmp_path / "p.png"), out)


# -- synthetic source ------------------------------------------------------------------------


def test_synthetic_source_yields_moving_frames_with_truth() -> None:
    src = SyntheticSource("synthetic:7", W, H, frames=5)
    assert not src.is_live
    with src:
        frames = [src.read() for _ in range(5)]
        assert src.read() is None
    assert all(isinstance(f, Frame) for f in frames)
    scene = SceneGenerator(W, H, 7).scene(0)
    for t, f in enumerate(frames):
        assert f is not None and f.index == t and f.source == "synthetic:7"
        assert (f.width, f.height) == (W, H) and f.truth is not None and f.truth
        img, truth = scene.render(t)
        assert f.image.tobytes() == img.tobytes() and f.truth == truth


def test_synthetic_source_reopen_restarts_and_is_infinite_by_default() -> None:
    src = SyntheticSource("synthetic", 64, 48)
    src.open()
    first = [src.read() for _ in range(30)]
    assert all(f is not None for f in first)
    src.close()
    src.open()
    again = src.read()
    assert again is not None and first[0] is not None
    assert again.index == 0 and again.image.tobytes() == first[0].image.tobytes()
    src.close()


def test_synthetic_source_paces_to_fps() -> None:
    src = SyntheticSource("synthetic:1", 64, 48, fps=40.0, frames=9)
    src.open()
    start = time.monotonic()
    n = 0
    while src.read() is not None:
        n += 1
    elapsed = time.monotonic() - start
    assert n == 9
    assert elapsed >= 8 / 40.0 - 0.01


def test_synthetic_spec_parsing() -> None:
    assert parse_synthetic_spec("synthetic") == 0
    assert parse_synthetic_spec("synthetic:42") == 42
    for bad in ("synthetic:", "synthetic:x", "synthetic:-1", "synth"):
        with pytest.raises(SourceError, match="synthetic"):
            parse_synthetic_spec(bad)


def test_read_before_open_is_an_error() -> None:
    with pytest.raises(SourceError, match="before open"):
        SyntheticSource("synthetic", 64, 48).read()


# -- OpenCV capture --------------------------------------------------------------------------


def _write_video(path: Path, n: int = 12, size: tuple = (96, 64)) -> List[np.ndarray]:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    frames = []
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, :, 0] = 20 * i  # a blue ramp: frames differ
        cv2.circle(img, (10 + 5 * i, 30), 8, (0, 0, 255), -1)
        writer.write(img)
        frames.append(img)
    writer.release()
    return frames


@pytest.fixture()
def video_file(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    _write_video(path)
    return path


def test_file_source_reads_every_frame_then_none(video_file: Path) -> None:
    src = OpenCVSource(f"file:{video_file}")
    assert not src.is_live
    with src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
        assert src.read() is None
    assert len(frames) == 12
    assert [f.index for f in frames] == list(range(12))
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.shape == (64, 96, 3) and f.truth is None
    # The red disc moves right: its mean column grows.
    xs = [np.nonzero(f.image[:, :, 2] > 150)[1].mean() for f in frames]
    assert xs == sorted(xs)


def test_missing_file_error_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.avi"
    with pytest.raises(SourceError, match=re.escape(f"file not found: {missing}")):
        OpenCVSource(f"file:{missing}").open()


def test_undecodable_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError, match=re.escape(f"cannot open {bad}")):
        OpenCVSource(f"file:{bad}").open()


@pytest.mark.skipif(os.path.exists("/dev/video99"), reason="a /dev/video99 exists here")
def test_missing_device_error() -> None:
    src = OpenCVSource("/dev/video99")
    assert src.is_live
    with pytest.raises(SourceError, match="^cannot open /dev/video99: no such device$"):
        src.open()
    with pytest.raises(SourceError, match=r"cannot open usb:99 \(/dev/video99\): no such device"):
        OpenCVSource("usb:99").open()


_REAL_CAPTURE = cv2.VideoCapture


class _FileInsteadOfStream:
    """A real ``cv2.VideoCapture`` on the test's video file, whatever URL is asked for, whose
    ``read`` can be made to fail: the only thing replaced is the grab itself.

    (A wrapper rather than a subclass: OpenCV 4.14 segfaults when a Python subclass of
    ``cv2.VideoCapture`` is garbage-collected.)
    """

    def __init__(self, path: Path, fail_at: int = 0) -> None:
        self.path = path
        self.fail_at = fail_at
        self.reads = 0
        self.created: List[Any] = []

    def __call__(self, target: Any, api: int, *rest: Any) -> Any:
        self.created.append((target, api))
        cap = _REAL_CAPTURE(str(self.path), cv2.CAP_FFMPEG)
        outer = self

        class Capture:
            def read(self) -> Any:
                outer.reads += 1
                if outer.reads == outer.fail_at:
                    return False, None
                return cap.read()

            def __getattr__(self, name: str) -> Any:
                return getattr(cap, name)

        return Capture()


def test_lost_stream_raises_then_reopens(video_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live source whose grab fails raises SourceError and works again after open()."""
    fake = _FileInsteadOfStream(video_file, fail_at=4)
    monkeypatch.setattr(opencv_capture.cv2, "VideoCapture", fake)
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    src = OpenCVSource("rtsp://camera.invalid/stream")
    assert src.is_live
    src.open()
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "rtsp_transport;tcp"
    assert fake.created[0] == ("rtsp://camera.invalid/stream", cv2.CAP_FFMPEG)
    assert [src.read() is not None for _ in range(3)] == [True] * 3
    with pytest.raises(SourceError, match="rtsp://camera.invalid/stream: camera lost"):
        src.read()
    with pytest.raises(SourceError, match="before open"):
        src.read()  # the lost capture was released
    src.open()
    f = src.read()
    assert f is not None and f.index == 3 and f.image.shape == (64, 96, 3)
    src.close()
    assert len(fake.created) == 2


def test_rtsp_keeps_operator_ffmpeg_options(video_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencv_capture.cv2, "VideoCapture", _FileInsteadOfStream(video_file))
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;udp")
    with OpenCVSource("rtsp://cam/x") as src:
        assert src.read() is not None
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "rtsp_transport;udp"


# -- images ----------------------------------------------------------------------------------


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((20, 30, 3), value, np.uint8))


def test_images_in_sorted_order_then_none(tmp_path: Path) -> None:
    for name, v in (("b.png", 2), ("a.png", 1), ("sub/c.png", 3), ("d.png", 4)):
        _png(tmp_path / name, v)
    src = ImagesSource(f"images:{tmp_path}/**/*.png")
    assert not src.is_live
    with src:
        values = []
        while (f := src.read()) is not None:
            assert f.image.shape == (20, 30, 3)
            values.append(int(f.image[0, 0, 0]))
        assert src.read() is None
    assert values == [1, 2, 4, 3]  # a.png, b.png, d.png, sub/c.png


def test_images_loop_and_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _png(tmp_path / "shots" / "1.png", 10)
    _png(tmp_path / "shots" / "2.png", 20)
    src = ImagesSource("images:~/shots/*.png", loop=True)
    src.open()
    got = []
    for _ in range(5):
        f = src.read()
        assert f is not None
        got.append(int(f.image[0, 0, 0]))
    assert got == [10, 20, 10, 20, 10]
    src.close()


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    _png(tmp_path / "1.png", 1)
    (tmp_path / "2.png").write_bytes(b"garbage")
    _png(tmp_path / "3.png", 3)
    src = ImagesSource(f"images:{tmp_path}/*.png")
    src.open()
    assert src.read() is not None
    with pytest.raises(SourceError, match=re.escape(f"cannot read image {tmp_path / '2.png'}")):
        src.read()
    f = src.read()
    assert f is not None and int(f.image[0, 0, 0]) == 3
    assert src.read() is None


def test_empty_glob_names_the_pattern(tmp_path: Path) -> None:
    pattern = f"{tmp_path}/*.jpg"
    with pytest.raises(SourceError, match=re.escape(f"no files match {pattern}")):
        ImagesSource(f"images:{pattern}").open()


# -- picamera2 -------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed")
def test_picamera2_missing_gives_install_hint() -> None:
    src = Picamera2Source("picamera2", 640, 480, 15)
    assert src.is_live
    with pytest.raises(SourceError) as err:
        src.open()
    msg = str(err.value)
    assert msg.startswith("picamera2 is not installed")
    assert "sudo apt install python3-picamera2" in msg and "--system-site-packages" in msg
    src.close()


# -- open_source -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, cls",
    [
        ("picamera2", Picamera2Source),
        ("usb:0", OpenCVSource),
        ("/dev/video2", OpenCVSource),
        ("rtsp://user:pw@10.0.0.5:554/stream1", OpenCVSource),
        ("http://10.0.0.5/video.mjpg", OpenCVSource),
        ("https://cam.example/stream", OpenCVSource),
        ("file:/tmp/clip.mp4", OpenCVSource),
        ("images:/data/*.jpg", ImagesSource),
        ("synthetic", SyntheticSource),
        ("synthetic:7", SyntheticSource),
    ],
)
def test_open_source_parses_every_form(spec: str, cls: type) -> None:
    src = open_source(spec, 320, 240, 15)
    assert isinstance(src, cls) and isinstance(src, FrameSource)
    assert src.spec == spec
    assert src.is_live == (cls in (Picamera2Source, OpenCVSource) and not spec.startswith("file:"))


def test_open_source_passes_size_and_fps() -> None:
    src = open_source("synthetic:3", 160, 120, 12.5)
    assert isinstance(src, SyntheticSource)
    assert (src.generator.width, src.generator.height, src.generator.seed, src.fps) == (160, 120, 3, 12.5)
    cam = open_source("usb:1", 800, 600, 30)
    assert isinstance(cam, OpenCVSource) and (cam.width, cam.height, cam.fps) == (800, 600, 30)


@pytest.mark.parametrize("spec", ["webcam", "", "usb:x", "ftp://host/x", "synthetic:abc", "file:", "images:"])
def test_open_source_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(SourceError) as err:
        open_source(spec)
    if spec in ("webcam", "", "ftp://host/x"):
        msg = str(err.value)
        assert "unknown camera source" in msg
        for form in ACCEPTED_FORMS:
            assert form in msg
