"""Label files for `cloud-trainer package --model` (cloud_trainer.byom.labels: every format it
reads, and its errors with file:line) and how the SSD-style kinds place labels against a
detector's background class (cloud_trainer.byom.common). No model is needed here."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from cloud_trainer.byom.common import detection_output_labels, normalisation_range
from cloud_trainer.byom.labels import parse_labels, read_labels
from cloud_trainer.byom.textproto import parse
from cloud_trainer.byom.tflite_file import read_tflite
from cloud_trainer.errors import PackageError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, text, labels",
    [
        ("coco.names", "person\nbicycle\n\n", ["person", "bicycle"]),  # darknet: trailing blank lines
        ("labels.txt", "  person \r\nbicycle", ["person", "bicycle"]),  # spaces, CRLF, no final newline
        # Coral: an index on each line, gaps kept as placeholders so indexes keep their meaning
        (
            "coco_labels.txt",
            "0  person\n1  bicycle\n3  motorcycle\n",
            ["person", "bicycle", "unused-2", "motorcycle"],
        ),
        ("indexed.txt", "1: person\n2: car\n", ["unused-0", "person", "car"]),  # "N: name", from 1
        # TF's labelmap.txt: "???" for every unused id
        ("labelmap.txt", "???\nperson\n???\ncar\n", ["unused-0", "person", "unused-2", "car"]),
        ("data.yaml", "names: [person, car]\n", ["person", "car"]),
        ("meta.yml", "names:\n  0: person\n  1: car\n", ["person", "car"]),
        # A TF label map: index id - 1, display_name over name, id 0 (background) skipped, gaps kept
        (
            "label_map.pbtxt",
            "item {\n  id: 0\n  name: 'background'\n}\n"
            'item {\n  id: 1\n  name: "/m/01g317"\n  display_name: "person"\n}\n'
            "item { id: 3 name: 'car' }\n",
            ["person", "unused-2", "car"],
        ),
        # Keypoint label maps nest ids of their own inside an item
        (
            "keypoints.pbtxt",
            "item {\n  id: 1\n  name: 'person'\n  keypoints {\n    id: 0\n    label: 'nose'\n  }\n}\n",
            ["person"],
        ),
    ],
)
def test_every_label_file_format(tmp_path: Path, name: str, text: str, labels: List[str]) -> None:
    assert read_labels(write(tmp_path, name, text)) == labels


@pytest.mark.parametrize(
    "name, text, error",
    [
        ("labels.txt", "person\n\ncar\n", "{path}:2: an empty label"),
        ("labels.txt", "person\ncar\nperson\n", "{path}:3: label 'person' appears twice (first on line 1)"),
        ("labels.txt", "\n\n", "{path}: no labels in it"),
        ("coral.txt", "0 person\n1 car\n1 bus\n", "{path}:3: index 1 appears twice (first on line 2)"),
        ("map.pbtxt", "item {\n  name: 'x'\n}\n", "{path}:1: an item without an id"),
        (
            "map.pbtxt",
            "item { id: 1 name: 'a' }\nitem { id: one name: 'b' }\n",
            "{path}:2: id 'one' is not a number",
        ),
        ("map.pbtxt", "item { id: 1 name: 'a' }\n\nitem { id: 2 }\n", "{path}:3: item 2 has no name"),
        (
            "map.pbtxt",
            "item { id: 1 name: 'a' }\nitem { id: 2 name: 'b' }\nitem { id: 1 name: 'c' }\n",
            "{path}:3: id 1 appears twice (first on line 1)",
        ),
        (
            "map.pbtxt",
            "item { id: 1 name: 'a' }\nitem { id: 2 name: 'a' }\n",
            "{path}:2: label 'a' appears twice",
        ),
        ("map.pbtxt", "# nothing\n", "{path}: no items in the label map"),
        ("data.yaml", "names: [a, b\n", "{path}: not YAML: "),
        ("data.yaml", "nc: 2\n", "{path}: no 'names' in it"),
        ("data.yaml", "names: {0: a, 2: b}\n", "{path}: names: class indexes must run 0..1"),
    ],
)
def test_label_file_errors_name_the_file_and_line(tmp_path: Path, name: str, text: str, error: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(PackageError) as e:
        read_labels(path)
    assert str(e.value).startswith(error.format(path=path)), str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_label_files(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"/missing.txt: cannot read the labels: No such file"):
        read_labels(tmp_path / "missing.txt")
    binary = tmp_path / "model.tflite"
    binary.write_bytes(b"\x1c\x00\x00\x00TFL3\xff\xfe")
    with pytest.raises(PackageError, match=r"model.tflite: not a label file \(not UTF-8 text"):
        read_labels(binary)


def test_labels_packed_in_a_model_are_parsed_by_their_name() -> None:
    assert parse_labels("person\ncar\n", "m.tflite:labels.txt", ".txt") == ["person", "car"]
    with pytest.raises(PackageError, match=r"^m.tflite:labelmap.txt:2: an empty label$"):
        parse_labels("a\n\nb\n", "m.tflite:labelmap.txt", ".txt")


M = Path("/models/m.xml")


def placed(labels: List[str], num_classes: Optional[int], background: int) -> Tuple[List[str], int]:
    return detection_output_labels(labels, "l.txt", num_classes, background, M, "DetectionOutput 'd'", [])


@pytest.mark.parametrize(
    "labels, num_classes, background, expected",
    [
        (["person"], 2, 0, (["person"], 1)),  # Open Model Zoo: labels without the background
        (["background", "person"], 2, 0, (["person"], 1)),  # ... or with it, first
        (["unused-0", "a", "b"], 3, 0, (["a", "b"], 1)),  # TF's "???" first line
        (["a", "b"], None, 0, (["a", "b"], 1)),  # the class count unknown: the convention
        (["a", "b"], 2, -1, (["a", "b"], 0)),  # no background class
        (["a", "b"], 3, 2, (["a", "b"], 0)),  # the background last
        (["a", "b", "background"], 3, 2, (["a", "b"], 0)),
    ],
)
def test_labels_against_the_background_class(
    labels: List[str], num_classes: Optional[int], background: int, expected: Tuple[List[str], int]
) -> None:
    assert placed(labels, num_classes, background) == expected


def test_labels_that_do_not_fit_the_detector() -> None:
    with pytest.raises(PackageError) as e:
        placed(["a", "b", "c"], 3, 0)
    assert str(e.value) == (
        "l.txt: 3 labels, but m.xml's DetectionOutput 'd' detects 2 classes (num_classes 3, "
        "background_label_id 0); give a label file with 2 labels, the first class first"
    )
    with pytest.raises(
        PackageError, match=r"^/models/m.xml: DetectionOutput 'd': background_label_id 1 lies among"
    ):
        placed(["a", "b"], 3, 1)


def test_normalisation_is_one_range_for_every_channel() -> None:
    assert normalisation_range([127.5], [127.5], "m") == [-1.0, 1.0]
    assert normalisation_range([0, 0, 0], [255, 255, 255], "m") == [0.0, 1.0]
    with pytest.raises(PackageError, match=r"^m: normalisation mean \[123.675, 116.28, 103.53\]"):
        normalisation_range([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "m")


def test_text_format_keeps_lines_and_names_them_in_errors() -> None:
    assert parse('node { name: "a" attr { key: "k" value { i: 3 } } }  # c\nnode { }', "g") == [
        ("node", [("name", "a", 1), ("attr", [("key", "k", 1), ("value", [("i", "3", 1)], 1)], 1)], 1),
        ("node", [], 2),
    ]
    with pytest.raises(PackageError, match=r"^g.pbtxt:2: expected a field name, found '}'$"):
        parse("node {\n} }\n", "g.pbtxt")
    with pytest.raises(PackageError, match=r"^g.pbtxt:3: cannot read"):
        parse('node {\n  name: "a"\n  op: "unterminated\n}', "g.pbtxt")
    with pytest.raises(PackageError, match=r"^g.pbtxt: a message is not closed \(missing '}'\)$"):
        parse("node {\n  attr {\n", "g.pbtxt")


def test_a_file_that_is_not_tflite(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"x.tflite: not a TFLite model \(no TFL3 flatbuffer identifier\)"):
        read_tflite(write(tmp_path, "x.tflite", "not a model"))
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(b"\xff\xff\xff\x00TFL3" + b"\x00" * 8)
    with pytest.raises(PackageError, match=r"damaged.tflite: a damaged TFLite flatbuffer"):
        read_tflite(damaged)
