"""Every backend on real model files, and the errors of the ones whose hardware is absent."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import numpy as np
import pytest

from edge_agent.backends import coral, registry
from edge_agent.backends.auto import choose, plan
from edge_agent.bundle import load_bundle
from edge_agent.detector import Detector
from edge_agent.errors import BackendError, BackendUnavailable, DecoderError
from edge_agent.loading import open_detector


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_openvino = pytest.mark.skipif(not have("openvino"), reason="openvino not installed")
needs_ort = pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")


def red_in_cell(row: int, col: int, size: int = 64, cells: int = 4) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    k = size // cells
    image[row * k : (row + 1) * k, col * k : (col + 1) * k] = (0, 0, 255)  # BGR red
    return image


# --- real models with known answers ---------------------------------------------------------
def test_ssd_postprocess_model_on_tflite(models_dir: Path) -> None:
    detector, _ = open_detector(str(models_dir / "ssd"), "tflite")
    found = detector.detect(red_in_cell(1, 2)).detections
    assert [d.label for d in found] == ["red"]
    b = found[0].box
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == pytest.approx((0.5, 0.25, 0.75, 0.5), abs=1e-4)
    # The outputs carry the converter's names, not the op's; the decoder found them by shape.
    assert len(detector.backend.outputs) == 4


@needs_ort
def test_int8_outputs_are_the_float_outputs_rounded(shapes_bundle: Path) -> None:
    """Before any decoding or NMS: the int8 TFLite model's dequantized outputs against the float
    ONNX model's, anchor by anchor, on every anchor where the float model is confident. The
    output is uint8 in steps of its scale (about 1/255 of the normalised range): rounding the
    output costs half a step, rounding the activations before it a few more. So cx, cy, w, h
    stay within 10 steps and class scores within 24 (measured on the shipped model: at most
    5.2 and 8.8 on these frames, 5.3 and 17 over 60 frames). A wrong scale, zero point or input
    quantization is off by far more (the zero point alone is 18 steps)."""
    from edge_agent.sources.synthetic import SceneGenerator

    float_det, _ = open_detector(str(shapes_bundle), "onnx")
    int8_det, _ = open_detector(str(shapes_bundle), "tflite")
    spec = int8_det.backend.outputs[0]
    assert spec.dtype == np.uint8 and spec.scale is not None and spec.scale < 1.5 / 255
    gen = SceneGenerator(width=640, height=480, seed=2024)
    box_steps, score_steps, anchors = [], [], 0
    for i in range(8):
        frame = gen.render(i)[0]
        f = float_det.backend.infer(float_det.prepare(frame)[0])[0].dequantized()[0]  # [4 + C, anchors]
        q = int8_det.backend.infer(int8_det.prepare(frame)[0])[0].dequantized()[0]
        confident = f[4:].max(axis=0) >= 0.5
        anchors += int(confident.sum())
        if not confident.any():
            continue
        box_steps.append(np.abs(f[:4, confident] - q[:4, confident]).max() / spec.scale)
        score_steps.append(np.abs(f[4:, confident] - q[4:, confident]).max() / spec.scale)
    assert anchors >= 20
    assert max(box_steps) <= 10, box_steps
    assert max(score_steps) <= 24, score_steps


@needs_openvino
def test_detection_output_model_on_openvino(models_dir: Path) -> None:
    detector, _ = open_detector(str(models_dir / "ovssd"), "openvino", device="CPU")
    image = red_in_cell(3, 0)
    image[0:16, 48:64] = (255, 0, 0)  # blue in row 0, column 3
    found = sorted(detector.detect(image).detections, key=lambda d: d.label)
    assert [d.label for d in found] == ["blue", "red"]
    assert (found[0].box.xmin, found[0].box.ymin) == pytest.approx((0.75, 0.0), abs=1e-3)
    assert (found[1].box.xmin, found[1].box.ymax) == pytest.approx((0.0, 1.0), abs=1e-3)


def test_detector_refuses_labels_that_do_not_fit(shapes_bundle: Path, tmp_path: Path) -> None:
    import json

    d = tmp_path / "b"
    shutil.copytree(shapes_bundle, d)
    doc = json.loads((d / "manifest.json").read_text())
    doc["labels"].append("hexagon")
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DecoderError, match=r"manifest.json: decoder yolov8: .*4 labels"):
        open_detector(str(d), "tflite")


# --- hardware that is absent here -----------------------------------------------------------
def test_coral_without_library_says_so(shapes_bundle: Path, tmp_path: Path) -> None:
    if coral.library_error() is None:
        pytest.skip("libedgetpu is installed here")
    probe = coral.CoralBackend.probe()
    assert not probe.available and "libedgetpu.so.1 not found" in probe.reason
    d = _with_fake_edgetpu_artifact(shapes_bundle, tmp_path)
    with pytest.raises(BackendUnavailable, match="libedgetpu.so.1 not found.*libedgetpu1-std"):
        registry.create("coral", device="usb:0").load(load_bundle(d))


def test_coral_needs_an_edgetpu_artifact(shapes_bundle: Path) -> None:
    with pytest.raises(BackendError, match="coral backend needs a edgetpu artifact; the bundle has tflite"):
        registry.create("coral").load(load_bundle(shapes_bundle))


def test_coral_bad_device_string() -> None:
    with pytest.raises(BackendError, match="'usb0' is not one of usb, usb:N, pci, pci:N"):
        coral.parse_device("usb0")
    assert coral.parse_device("pci:1") == {"device": "pci:1"}
    assert coral.parse_device(None) == {}


def _fake_sysfs(root: Path, ids: List[tuple]) -> Path:
    for i, (vendor, product) in enumerate(ids):
        d = root / f"1-{i}"
        d.mkdir(parents=True)
        (d / "idVendor").write_text(vendor + "\n")
        (d / "idProduct").write_text(product + "\n")
    return root


def _with_fake_edgetpu_artifact(shapes_bundle: Path, tmp_path: Path) -> Path:
    """The shapes bundle plus its int8 model listed as an edgetpu artifact (the thinnest stand-in
    for a compiled model: the delegate is what is mocked, the interpreter path stays real)."""
    import json

    from cloud_trainer.package import artifact_entry

    d = tmp_path / "coral-bundle"
    shutil.copytree(shapes_bundle, d)
    shutil.copyfile(d / "model_int8.tflite", d / "model_int8_edgetpu.tflite")
    doc = json.loads((d / "manifest.json").read_text())
    doc["artifacts"].append(artifact_entry("edgetpu", "int8", d / "model_int8_edgetpu.tflite"))
    (d / "manifest.json").write_text(json.dumps(doc))
    return d


def test_coral_device_enumeration_and_absent_device(monkeypatch, tmp_path: Path, shapes_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    sysfs = _fake_sysfs(tmp_path / "usb", [("1d6b", "0002"), ("1a6e", "089a"), ("18d1", "9302")])
    monkeypatch.setattr(coral, "SYSFS_USB", sysfs)
    monkeypatch.setattr(coral, "DEV", tmp_path / "dev")
    assert coral.list_edgetpus() == ["usb:0", "usb:1"]
    monkeypatch.setattr(coral, "library_error", lambda: None)
    d = _with_fake_edgetpu_artifact(shapes_bundle, tmp_path)
    with pytest.raises(BackendUnavailable, match=r"no EdgeTPU at pci \(found: usb:0, usb:1\)"):
        registry.create("coral", device="pci").load(load_bundle(d))
    monkeypatch.setattr(coral, "SYSFS_USB", _fake_sysfs(tmp_path / "none", []))
    with pytest.raises(BackendUnavailable, match=r"no EdgeTPU at any EdgeTPU \(found: none\)"):
        registry.create("coral").load(load_bundle(d))


def test_coral_delegate_path_runs_the_interpreter(monkeypatch, tmp_path: Path, shapes_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    """With a device 'present', the backend hands the delegate to the real interpreter; here the
    delegate is None-equivalent (an empty list), everything else is the real code path."""
    calls = []
    monkeypatch.setattr(coral, "library_error", lambda: None)
    monkeypatch.setattr(coral, "list_edgetpus", lambda: ["usb:0"])
    monkeypatch.setattr(
        coral.CoralBackend, "_delegates", lambda self: calls.append(self.options.device) or []
    )
    d = _with_fake_edgetpu_artifact(shapes_bundle, tmp_path)
    backend = registry.create("coral", device="usb:0")
    backend.load(load_bundle(d))
    assert calls == ["usb:0"] and backend.artifact is not None and backend.artifact.runtime == "edgetpu"
    assert backend.accelerator == "EdgeTPU usb:0"
    detector = Detector(load_bundle(d).manifest, backend)
    detector.warm()


def test_coral_delegate_failure_is_reported(monkeypatch, tmp_path: Path, shapes_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(coral, "library_error", lambda: None)
    monkeypatch.setattr(coral, "list_edgetpus", lambda: ["usb:0"])

    def fail(options):  # type: ignore[no-untyped-def]
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(coral, "load_delegate", fail)
    d = _with_fake_edgetpu_artifact(shapes_bundle, tmp_path)
    with pytest.raises(
        BackendUnavailable, match="EdgeTPU delegate failed to load on usb:0: Failed to load delegate"
    ):
        registry.create("coral", device="usb:0").load(load_bundle(d))


@needs_openvino
def test_openvino_myriad_absent_lists_devices(shapes_bundle: Path) -> None:
    with pytest.raises(BackendUnavailable, match=r"device MYRIAD not found \(available: .*CPU.*\)"):
        registry.create("openvino", device="MYRIAD").load(load_bundle(shapes_bundle))


def test_unknown_backend_and_bad_options() -> None:
    with pytest.raises(
        BackendError, match="unknown backend 'tpu'; known: auto, coral, onnx, opencv, openvino, tflite"
    ):
        registry.create("tpu")
    with pytest.raises(BackendError, match=r"backend openvino: bad options: num_requests: Input should be"):
        registry.create("openvino", options={"num_requests": "many"})
    # Another backend's options are left to it (under auto every candidate gets the same mapping);
    # a key no backend takes is refused at start, by check_options (tests/agent/test_detector_options.py).
    assert registry.create("tflite", options={"num_requests": 2}).options.device is None


def test_tflite_refuses_a_device(shapes_bundle: Path) -> None:
    with pytest.raises(BackendError, match="tflite runs on the CPU; device 'MYRIAD'"):
        registry.create("tflite", device="MYRIAD").load(load_bundle(shapes_bundle))


# --- auto -----------------------------------------------------------------------------------
def test_auto_falls_back_to_cpu_with_reasons(shapes_bundle: Path, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    d = _with_fake_edgetpu_artifact(shapes_bundle, tmp_path)
    caplog.set_level(logging.INFO, logger="edge_agent")
    choice = choose(load_bundle(d))
    assert choice.backend.name == "tflite"
    reasons = " | ".join(choice.reasons)
    assert "coral:" in reasons
    assert "openvino on MYRIAD:" in reasons
    log = caplog.text
    assert "auto: skipping coral" in log and "auto: chose tflite" in log


def test_auto_tries_the_next_when_a_load_fails(shapes_bundle: Path, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A tflite artifact that does not load: auto logs it and lands on the next candidate."""
    import json

    d = tmp_path / "broken-tflite"
    shutil.copytree(shapes_bundle, d)
    (d / "model_int8.tflite").write_bytes(b"\x00" * 64)
    doc = json.loads((d / "manifest.json").read_text())
    from cloud_trainer.package import artifact_entry

    doc["artifacts"][0] = artifact_entry("tflite", "int8", d / "model_int8.tflite")
    (d / "manifest.json").write_text(json.dumps(doc))
    caplog.set_level(logging.INFO, logger="edge_agent")
    choice = choose(load_bundle(d))
    assert choice.backend.name != "tflite"
    assert any(r.startswith("tflite: ") and "cannot load" in r for r in choice.reasons)
    assert "auto: tflite failed to load, falling back" in caplog.text


def test_auto_plan_orders_candidates() -> None:
    steps = plan(["tflite", "onnx"])
    assert [(n, d) for n, d, _ in steps][:4] == [
        ("coral", None),
        ("openvino", "MYRIAD"),
        ("tflite", None),
        ("openvino", "CPU"),
    ]
    skipped = {n + (d or ""): why for n, d, why in steps}
    assert skipped["coral"] == "the bundle has no edgetpu artifact"


# --- plugins --------------------------------------------------------------------------------
@pytest.fixture
def install_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str, str], None]]:
    """install(module, source, "name = module:Class"): a real distribution whose entry point
    registers a backend (a dist-info directory on sys.path); the modules go again afterwards."""
    modules: List[str] = []

    def install(module: str, source: str, entry: str) -> None:
        (tmp_path / f"{module}.py").write_text(source)
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[edgewatch.backends]\n{entry}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        modules.append(module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def test_third_party_backend_registers_by_entry_point(
    install_plugin: Callable[[str, str, str], None],
) -> None:
    install_plugin(
        "edgewatch_fake_plugin",
        "from edge_agent.backends.tflite import TFLiteBackend\n"
        "class FakeBackend(TFLiteBackend):\n    name = 'fake'\n",
        "fake = edgewatch_fake_plugin:FakeBackend",
    )
    assert "fake" in registry.available_names()
    assert registry.backend_class("fake").__name__ == "FakeBackend"
    # A subclass of a built-in does not inherit its place in auto, nor take over its artifacts.
    assert "fake" not in [cls.name for cls, _ in registry.auto_order()]
    assert registry.native_backend("tflite").name == "tflite"


@needs_openvino
def test_openvino_keeps_several_requests_in_flight(shapes_bundle: Path) -> None:
    """submit() starts requests asynchronously; each result belongs to its own input."""
    from edge_agent.preprocess import Preprocessor
    from edge_agent.sources.synthetic import SceneGenerator

    bundle = load_bundle(shapes_bundle)
    backend = registry.create("openvino", device="CPU", options={"num_requests": 3})
    backend.load(bundle)
    assert backend.max_in_flight == 3
    pre = Preprocessor(bundle.manifest.input, backend.input)
    gen = SceneGenerator(width=640, height=480, seed=9)
    tensors = [pre(gen.render(i)[0])[0] for i in range(6)]
    expected = [backend.infer(t)[0].data for t in tensors]
    pending = [backend.submit(t) for t in tensors[:3]]  # all three slots busy at once
    got = [p.result()[0].data for p in pending]
    pending = [backend.submit(t) for t in tensors[3:]]
    got += [p.result()[0].data for p in pending]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-6)
    assert not np.allclose(expected[0], expected[1])  # different frames, different outputs


def test_what_runs_what_is_declared_once_by_each_backend_class() -> None:
    """auto, the loader, `devices` and the trainer read the classes: no table disagrees."""
    classes = {cls.name: cls for cls in registry.loadable_classes()}
    order = [(cls.name, device) for cls, device in registry.auto_order()]
    assert order == [
        ("coral", None),
        ("openvino", "MYRIAD"),
        ("tflite", None),
        ("openvino", "CPU"),
        ("onnx", None),
        ("opencv", None),
    ]
    assert registry.artifact_runtimes() == ["edgetpu", "onnx", "opencv", "openvino", "tflite"]
    assert {r: registry.native_backend(r).name for r in registry.artifact_runtimes()} == {
        "edgetpu": "coral",
        "onnx": "onnx",
        "opencv": "opencv",
        "openvino": "openvino",
        "tflite": "tflite",
    }
    assert registry.native_backend("openvino").check_device == "CPU"
    # auto offers an ONNX-only bundle to every backend that declares onnx, openvino included
    onnx_takers = [n for n, _, why in plan(["onnx"]) if not why.startswith("the bundle has no")]
    assert onnx_takers == [n for n, _ in order if "onnx" in classes[n].runtimes]
    with pytest.raises(BackendError, match="no backend runs 'hef' artifacts natively"):
        registry.native_backend("hef")


def test_a_plugin_joins_auto_through_its_own_class(install_plugin: Callable[[str, str, str], None]) -> None:
    """A new backend is one module plus its registration: its auto place and runtimes come with it."""
    install_plugin(
        "edgewatch_slot_plugin",
        "from edge_agent.backends.base import AutoSlot\n"
        "from edge_agent.backends.onnx import ONNXBackend\n"
        "class NPUBackend(ONNXBackend):\n"
        "    name = 'npu'\n"
        "    runtimes = ('npu', 'onnx')\n"
        "    auto_slots = (AutoSlot(5, 'NPU0'),)\n",
        "npu = edgewatch_slot_plugin:NPUBackend",
    )
    assert [(c.name, d) for c, d in registry.auto_order()][0] == ("npu", "NPU0")
    assert "npu" in registry.artifact_runtimes()
    assert registry.native_backend("npu").name == "npu"
    first = plan(["onnx"])[0]
    assert first[:2] == ("npu", "NPU0") and first[2] != ""  # tried first; its probe decides


def test_a_plugin_registered_under_another_name_is_refused(
    install_plugin: Callable[[str, str, str], None],
) -> None:
    install_plugin(
        "edgewatch_misnamed",
        "from edge_agent.backends.onnx import ONNXBackend\nclass X(ONNXBackend):\n    name = 'x'\n",
        "y = edgewatch_misnamed:X",
    )
    with pytest.raises(BackendError, match="calls itself 'x'"):
        registry.backend_class("y")
    assert "y" not in [c.name for c in registry.loadable_classes()]


def test_a_detector_owns_its_backend_and_closes_it_once(shapes_bundle: Path) -> None:
    closed: List[str] = []
    with open_detector(str(shapes_bundle), "tflite")[0] as detector:
        real_close = detector.backend.close

        def counting_close() -> None:
            closed.append(detector.backend.name)
            real_close()

        detector.backend.close = counting_close  # type: ignore[method-assign]
        assert detector.detect(np.zeros((48, 64, 3), np.uint8)).image.width == 64
    assert detector.closed and closed == ["tflite"]
    detector.close()  # again: nothing more to release
    assert closed == ["tflite"]


def test_a_backend_that_fails_to_close_does_not_fail_the_detectors_close(
    shapes_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    detector, _ = open_detector(str(shapes_bundle), "tflite")

    def broken() -> None:
        raise RuntimeError("the device went away")

    detector.backend.close = broken  # type: ignore[method-assign]
    detector.close()
    assert detector.closed and "the device went away" in caplog.text


@needs_openvino
@pytest.mark.parametrize("bundle", ["shapes", "ovssd"])
def test_openvino_preprocessing_in_the_model_computes_what_numpy_does(models_dir: Path, bundle: str) -> None:
    """By default OpenVINO's PrePostProcessor takes the placed BGR uint8 frame and does colour,
    range and layout itself; the outputs are those of the numpy path (fp32 inference)."""
    from edge_agent.sources.synthetic import SceneGenerator

    opened = [
        open_detector(
            str(models_dir / bundle),
            "openvino",
            options={"preprocess_in_model": in_model, "inference_precision": "f32"},
        )[0]
        for in_model in (True, False)
    ]
    with opened[0] as in_model, opened[1] as numpy_path:
        assert in_model.backend.input.takes_bgr_frame and in_model.backend.input.dtype == np.uint8
        assert not numpy_path.backend.input.takes_bgr_frame
        gen = SceneGenerator(width=200, height=150, seed=5)
        for i in range(3):
            image, _ = gen.render(i)
            tensor, _ = in_model.prepare(image)
            assert tensor.dtype == np.uint8 and tensor.shape[-1] == 3  # the frame, placed: nothing else
            ours = in_model.backend.infer(tensor)
            theirs = numpy_path.backend.infer(numpy_path.prepare(image)[0])
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-5)
            assert in_model.detect(image).detections == numpy_path.detect(image).detections


def test_tflite_runs_requests_on_its_own_thread_in_order_and_closes(shapes_bundle: Path) -> None:
    """submit() queues a request for the backend's worker (the one thread that touches the
    interpreter); results are those of infer(), per request, and close() stops the worker
    after the requests already submitted."""
    import threading

    from edge_agent.sources.synthetic import SceneGenerator

    detector, _ = open_detector(str(shapes_bundle), "tflite")
    backend = detector.backend
    assert backend.max_in_flight == 2
    gen = SceneGenerator(width=320, height=240, seed=5)
    tensors = [detector.prepare(gen.render(i)[0])[0] for i in range(5)]
    expected = [backend.infer(t)[0].data for t in tensors]
    assert not np.array_equal(expected[0], expected[1])
    pending = [backend.submit(t) for t in tensors]  # more than max_in_flight: they queue
    for p, e in zip(pending, expected):
        np.testing.assert_array_equal(p.result()[0].data, e)
        assert p.started is not None and p.finished is not None and p.finished >= p.started
    workers = [t for t in threading.enumerate() if t.name == "tflite-invoke"]
    assert workers
    last = [backend.submit(t) for t in tensors[:2]]
    detector.close()
    for p, e in zip(last, expected):  # submitted before close: still answered
        np.testing.assert_array_equal(p.result()[0].data, e)
    assert not backend._worker.is_alive()  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="closed"):
        backend.submit(tensors[0])


def test_tflite_request_errors_reach_the_caller_and_the_worker_goes_on(shapes_bundle: Path) -> None:
    with open_detector(str(shapes_bundle), "tflite")[0] as detector:
        backend = detector.backend
        wrong = np.zeros((1, 8, 8, 3), np.uint8)  # not the model's input shape
        with pytest.raises(ValueError):
            backend.submit(wrong).result()
        tensor, _ = detector.prepare(np.zeros((240, 320, 3), np.uint8))
        assert backend.infer(tensor)[0].data.shape == tuple(backend.outputs[0].shape)


def test_a_tflite_backend_dropped_without_close_stops_its_worker(shapes_bundle: Path) -> None:
    import gc
    import weakref

    backend = registry.create("tflite")
    backend.load(load_bundle(shapes_bundle))
    worker = backend._worker  # type: ignore[attr-defined]
    assert worker.is_alive()
    ref = weakref.ref(backend)
    del backend
    gc.collect()
    assert ref() is None
    worker.join(10)
    assert not worker.is_alive()
