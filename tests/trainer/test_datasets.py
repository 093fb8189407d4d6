"""Dataset readers, writers, synthesis and statistics, on real-format files the tests write."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

from cloud_trainer.data import (
    FORMATS,
    Annotation,
    Dataset,
    DatasetError,
    Sample,
    describe,
    detect_format,
    format_report,
    load_dataset,
    parse_classes,
    synthesize,
    write_dataset,
)
from edge_agent.errors import EdgewatchError

Box = Tuple[str, float, float, float, float]


def image(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), 90, np.uint8)
    cv2.rectangle(pixels, (5, 5), (20, 20), (0, 0, 255), -1)
    assert cv2.imwrite(str(path), pixels)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def boxes(ds: Dataset, name: str) -> List[Box]:
    [sample] = [s for s in ds.samples if s.image.name == name]
    return [(ds.classes[b.class_id], b.xmin, b.ymin, b.xmax, b.ymax) for b in sample.boxes]


def error(match: str, fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(DatasetError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def voc_xml(
    filename: str,
    objects: Sequence[Tuple[str, str, str, str, str]],
    size: Optional[Tuple[int, int]] = (64, 48),
    extra: str = "",
    difficult: Sequence[int] = (),
) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{1 if k in difficult else 0}</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>\n"
        for k, (n, a, b, c, d) in enumerate(objects)
    )
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    head = f"<annotation><folder>x</folder><filename>{filename}</filename>{extra}{size_xml}"
    return f"{head}\n{objs}</annotation>\n"


# -- Pascal VOC ----------------------------------------------------------------------------------


def test_voc_layout_float_coordinates_and_difficult(tmp_path: Path) -> None:
    image(tmp_path / "JPEGImages" / "a.jpg")
    image(tmp_path / "JPEGImages" / "b.jpg")
    write(
        tmp_path / "Annotations" / "a.xml",
        voc_xml(
            "a.jpg", [("dog", "1.5", "2", "30.25", "40"), ("cat", "10", "10", "20", "20")], difficult=[1]
        ),
    )
    write(tmp_path / "Annotations" / "b.xml", voc_xml("b.jpg", []))
    write(tmp_path / "ImageSets" / "Main" / "train.txt", "a\n")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert boxes(ds, "a.jpg") == [("dog", 1.5, 2.0, 30.25, 40.0), ("cat", 10.0, 10.0, 20.0, 20.0)]
    assert boxes(ds, "b.jpg") == []
    assert all((s.width, s.height) == (64, 48) for s in ds.samples)
    assert any("difficult" in w for w in ds.report.warnings)
    assert (ds.report.clipped, ds.report.dropped) == (0, 0)


def test_voc_flat_folder_with_vott_and_labelimg_quirks(tmp_path: Path) -> None:
    image(tmp_path / "one.jpg", 80, 60)
    image(tmp_path / "two.png", 32, 24)
    image(tmp_path / "three.jpeg")
    # VoTT: a folder in <filename> and a <path> from another machine; no <size>.
    write(
        tmp_path / "one.xml",
        voc_xml(
            "export/one.jpg", [("car", "0", "0", "10", "10")], size=None, extra="<path>C:\\u\\one.jpg</path>"
        ),
    )
    # <size> of zero, a Windows path as the file name.
    write(tmp_path / "two.xml", voc_xml("D:\\pics\\two.png", [("car", "1", "1", "5", "5")], size=(0, 0)))
    # No extension in <filename>: found by the XML file's own name.
    write(tmp_path / "three.xml", voc_xml("three", [("bus", "2", "2", "8", "8")]))
    ds = load_dataset(tmp_path, "voc")
    sizes = {s.image.name: (s.width, s.height) for s in ds.samples}
    assert sizes == {"one.jpg": (80, 60), "two.png": (32, 24), "three.jpeg": (64, 48)}
    assert ds.classes == ["bus", "car"]


def test_voc_missing_image_names_the_file_and_the_image(tmp_path: Path) -> None:
    write(tmp_path / "Annotations" / "a.xml", voc_xml("ghost.jpg", [("dog", "1", "1", "5", "5")]))
    (tmp_path / "JPEGImages").mkdir()
    msg = error("ghost.jpg", load_dataset, tmp_path)
    assert "a.xml" in msg and "not found" in msg


def test_voc_bad_xml_names_the_file_and_line(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    write(tmp_path / "a.xml", "<annotation>\n<filename>a.jpg</filename>\n<object></annotation>\n")
    error(r"a\.xml:3: not well-formed XML", load_dataset, tmp_path, "voc")


def test_voc_non_number_and_missing_name(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    write(tmp_path / "a.xml", voc_xml("a.jpg", [("dog", "1", "x1", "5", "5")]))
    error(r"a\.xml: <object> #1 \('dog'\): <ymin> 'x1' is not a number", load_dataset, tmp_path, "voc")
    write(tmp_path / "a.xml", voc_xml("a.jpg", [("", "1", "1", "5", "5")]))
    error(r"a\.xml: <object> #1 has no <name>", load_dataset, tmp_path, "voc")


def test_voc_boxes_outside_are_clipped_or_dropped_and_counted(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    objects = [
        ("dog", "-5", "10", "30", "60"),  # partly outside: clipped to 0..30, 10..48
        ("dog", "70", "10", "90", "20"),  # right of the image: nothing left
        ("dog", "10", "10", "10", "20"),  # zero width
        ("dog", "1", "1", "9", "9"),
        ("dog", "1", "1", "9", "9"),  # duplicate
    ]
    write(tmp_path / "a.xml", voc_xml("a.jpg", objects))
    ds = load_dataset(tmp_path)
    assert boxes(ds, "a.jpg") == [("dog", 0.0, 10.0, 30.0, 48.0), ("dog", 1.0, 1.0, 9.0, 9.0)]
    assert (ds.report.clipped, ds.report.dropped) == (1, 2)
    text = " ".join(ds.report.warnings)
    assert "clipped" in text and "outside" in text and "empty box" in text and "duplicate" in text
    assert "a.xml" in text


def test_voc_unknown_class_and_classes_file(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    write(tmp_path / "a.xml", voc_xml("a.jpg", [("zebra", "1", "1", "5", "5"), ("ant", "2", "2", "6", "6")]))
    error(r"a\.xml.*unknown class 'zebra'", load_dataset, tmp_path, "voc", classes=["ant", "bee"])
    assert load_dataset(tmp_path, classes=["zebra", "ant"]).classes == ["zebra", "ant"]
    write(tmp_path / "classes.txt", "zebra\nbee\nant\n")
    assert load_dataset(tmp_path).classes == ["zebra", "bee", "ant"]


def test_voc_devkit_one_level_down(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    image(root / "JPEGImages" / "a.jpg")
    write(root / "Annotations" / "a.xml", voc_xml("a.jpg", [("dog", "1", "1", "5", "5")]))
    assert detect_format(tmp_path / "VOCdevkit") == "voc"
    assert len(load_dataset(tmp_path / "VOCdevkit").samples) == 1


# -- YOLO ----------------------------------------------------------------------------------------


def test_yolo_images_labels_layout(tmp_path: Path) -> None:
    image(tmp_path / "images" / "train" / "a.jpg", 100, 50)
    image(tmp_path / "images" / "train" / "b.jpg", 100, 50)
    image(tmp_path / "images" / "val" / "c.png", 100, 50)
    write(tmp_path / "classes.txt", "cat\ndog\nbird\n")
    write(tmp_path / "labels" / "train" / "a.txt", "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.1 0.1\n")
    write(tmp_path / "labels" / "val" / "c.txt", "2 0.1 0.2 0.3 0.2 0.2 0.4\n")  # a polygon
    write(tmp_path / "labels" / "train" / "gone.txt", "0 0.5 0.5 0.1 0.1\n")
    image(tmp_path / "runs" / "preview.jpg")  # not under images/: not part of the dataset
    assert detect_format(tmp_path) == "yolo"
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cat", "dog", "bird"]
    assert boxes(ds, "a.jpg") == [
        ("dog", pytest.approx(40.0), pytest.approx(15.0), pytest.approx(60.0), pytest.approx(35.0)),
        ("cat", pytest.approx(5.0), pytest.approx(2.5), pytest.approx(15.0), pytest.approx(7.5)),
    ]
    assert boxes(ds, "c.png") == [
        ("bird", pytest.approx(10.0), pytest.approx(10.0), pytest.approx(30.0), pytest.approx(20.0))
    ]
    assert boxes(ds, "b.jpg") == []
    assert len(ds.samples) == 3
    text = " ".join(ds.report.warnings)
    assert "1 images have no label file" in text and "1 label files have no image" in text


def test_yolo_roboflow_data_yaml(tmp_path: Path) -> None:
    for split, name in (("train", "a.jpg"), ("valid", "b.jpg")):
        image(tmp_path / split / "images" / name)
        write(tmp_path / split / "labels" / (Path(name).stem + ".txt"), "1 0.5 0.5 0.5 0.5\n")
    write(
        tmp_path / "data.yaml",
        "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {0: person, 1: helmet}\n",
    )
    write(tmp_path / "README.roboflow.txt", "exported\n")
    assert detect_format(tmp_path) == "yolo"
    for where in (tmp_path, tmp_path / "data.yaml"):
        ds = load_dataset(where)
        assert ds.classes == ["person", "helmet"]
        assert sorted(s.image.name for s in ds.samples) == ["a.jpg", "b.jpg"]
        assert boxes(ds, "a.jpg") == [("helmet", 16.0, 12.0, 48.0, 36.0)]


def test_yolo_flat_folder_with_obj_names(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    write(tmp_path / "a.txt", "0 0.5 0.5 1.0 1.0\n")
    write(tmp_path / "obj.names", "thing\n")
    ds = load_dataset(tmp_path)
    assert boxes(ds, "a.jpg") == [("thing", 0.0, 0.0, 64.0, 48.0)]


def test_yolo_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    write(tmp_path / "classes.txt", "a\nb\nc\n")
    label = tmp_path / "a.txt"
    write(label, "0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    msg = error(r"a\.txt:2: class id 7 out of range: 3 classes", load_dataset, tmp_path, "yolo")
    assert "classes.txt" in msg
    write(label, "0 0.5 0.5 0.1\n")
    error(r"a\.txt:1: expected 5 values", load_dataset, tmp_path, "yolo")
    write(label, "0 0.5 0.5 0.1 0.1\n1 0.5 abc 0.1 0.1\n")
    error(r"a\.txt:2: y_center 'abc' is not a number", load_dataset, tmp_path, "yolo")
    write(label, "x 0.5 0.5 0.1 0.1\n")
    error(r"a\.txt:1: class id 'x' is not a number", load_dataset, tmp_path, "yolo")


def test_yolo_boxes_outside_and_no_names(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg", 100, 100)
    write(tmp_path / "a.txt", "0 1.0 0.5 0.5 0.2\n0 1.5 0.5 0.2 0.2\n")
    error(r"no class names", load_dataset, tmp_path, "yolo")
    ds = load_dataset(tmp_path, "yolo", classes=["x"])
    assert boxes(ds, "a.jpg") == [("x", 75.0, 40.0, 100.0, 60.0)]
    assert (ds.report.clipped, ds.report.dropped) == (1, 1)


def test_yolo_without_any_label_file_is_an_error(tmp_path: Path) -> None:
    image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    error("none of the 1 images has a label file", load_dataset, tmp_path, "yolo", classes=["x"])


def test_yolo_unreadable_image(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg", "not a jpeg")
    write(tmp_path / "a.txt", "0 0.5 0.5 0.1 0.1\n")
    error(r"a\.txt: image .*a\.jpg cannot be decoded", load_dataset, tmp_path, "yolo", classes=["x"])


def test_yolo_bad_yaml(tmp_path: Path) -> None:
    write(tmp_path / "data.yaml", "names: [a, b\ntrain: images\n")
    error(r"data\.yaml:\d+: not valid YAML", load_dataset, tmp_path / "data.yaml")
    write(tmp_path / "data.yaml", "names: [a]\ntrain: nowhere/images\n")
    error(r"data\.yaml: train: 'nowhere/images' not found", load_dataset, tmp_path / "data.yaml")


# -- COCO ----------------------------------------------------------------------------------------


def coco_doc(**changes: object) -> dict:
    doc = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 11, "file_name": "b.jpg"},  # no size: read from the image
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 12, "bbox": [1.5, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [50, 40, 30, 30]},
        ],
        "categories": [
            {"id": 12, "name": "zebra", "supercategory": "animal"},
            {"id": 3, "name": "ant", "supercategory": "animal"},
            {"id": 7, "name": "bee", "supercategory": "animal"},
        ],
    }
    doc.update(changes)
    return doc


def test_coco_categories_crowd_and_image_root(tmp_path: Path) -> None:
    image(tmp_path / "images" / "a.jpg")
    image(tmp_path / "images" / "b.jpg", 70, 50)
    write(tmp_path / "annotations" / "instances_train.json", json.dumps(coco_doc()))
    write(tmp_path / "annotations" / "captions_train.json", json.dumps({"images": [], "annotations": []}))
    assert detect_format(tmp_path) == "coco"
    ds = load_dataset(tmp_path)
    assert ds.classes == ["ant", "bee", "zebra"]  # contiguous, in category-id order
    assert boxes(ds, "a.jpg") == [("zebra", 1.5, 2.0, 11.5, 22.0), ("ant", 0.0, 0.0, 5.0, 5.0)]
    assert boxes(ds, "b.jpg") == [("bee", 50.0, 40.0, 70.0, 50.0)]
    [b] = [s for s in ds.samples if s.image.name == "b.jpg"]
    assert (b.width, b.height) == (70, 50)
    assert ds.report.clipped == 1
    assert any("1 iscrowd annotations skipped" in w for w in ds.report.warnings)


def test_coco_roboflow_placeholder_category(tmp_path: Path) -> None:
    image(tmp_path / "train" / "a.jpg")
    doc = {
        "images": [{"id": 0, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [
            {"id": 0, "name": "shapes", "supercategory": "none"},
            {"id": 1, "name": "circle", "supercategory": "shapes"},
            {"id": 2, "name": "square", "supercategory": "shapes"},
        ],
    }
    write(tmp_path / "train" / "_annotations.coco.json", json.dumps(doc))
    ds = load_dataset(tmp_path)
    assert ds.classes == ["circle", "square"]
    assert any("supercategory" in w for w in ds.report.warnings)


def test_coco_errors(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    image(tmp_path / "b.jpg")
    f = tmp_path / "ann.json"
    write(f, '{"images": [\n  {"id": 1,,}\n]}')
    error(r"ann\.json:2: not valid JSON", load_dataset, f)
    write(f, json.dumps({"images": []}))
    error(r"ann\.json: not a COCO detection file", load_dataset, f)
    doc = coco_doc()
    doc["images"][1]["file_name"] = "ghost.jpg"  # type: ignore[index]
    write(f, json.dumps(doc))
    error(r"ann\.json: images\[1\]: image 'ghost.jpg' not found", load_dataset, f)
    doc = coco_doc()
    doc["annotations"][0]["category_id"] = 99  # type: ignore[index]
    write(f, json.dumps(doc))
    error(r"ann\.json: annotations\[0\] \(id 1\): category_id 99", load_dataset, f)
    doc = coco_doc()
    doc["annotations"][1]["bbox"] = [0, "x", 1, 1]  # type: ignore[index]
    write(f, json.dumps(doc))
    error(r"annotations\[1\] \(id 2\): y 'x' is not a number", load_dataset, f)
    write(f, json.dumps(coco_doc()))
    error(
        r"ann\.json: annotations\[0\] \(id 1\): unknown class 'zebra'",
        load_dataset,
        f,
        classes=["ant", "bee"],
    )


# -- CSV -----------------------------------------------------------------------------------------


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    image(tmp_path / "b.jpg")
    image(tmp_path / "c.jpg")
    rows = (
        "a.jpg,64,48,dog,1,2,30,40\na.jpg,64,48,cat,5,5,10,10\nb.jpg,64,48,dog,0,0,64,48\nc.jpg,64,48,,,,,\n"
    )
    write(tmp_path / "ann.csv", "filename,width,height,class,xmin,ymin,xmax,ymax\n" + rows)
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert boxes(ds, "a.jpg") == [("dog", 1.0, 2.0, 30.0, 40.0), ("cat", 5.0, 5.0, 10.0, 10.0)]
    assert boxes(ds, "c.jpg") == []
    write(tmp_path / "ann.csv", rows)
    assert load_dataset(tmp_path / "ann.csv").sha256() == ds.sha256()
    # Columns by name, in another order, without sizes.
    write(tmp_path / "ann.csv", "xmin,ymin,xmax,ymax,label,image\n1,2,30,40,dog,a.jpg\n")
    assert boxes(load_dataset(tmp_path, "csv"), "a.jpg") == [("dog", 1.0, 2.0, 30.0, 40.0)]


def test_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    f = tmp_path / "ann.csv"
    write(
        f,
        "filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,64,48,dog,1,2,3,4\na.jpg,64,48,dog,1,two,3,4\n",
    )
    error(r"ann\.csv:3: ymin 'two' is not a number", load_dataset, f)
    write(f, "a.jpg,64,48,dog,1,2,3,4\na.jpg,64,48,cat,1,2,3,4\n")
    error(r"ann\.csv:2: unknown class 'cat'", load_dataset, f, classes=["dog"])
    write(f, "a.jpg,64,48,dog,1,2,3,4\nmissing.jpg,64,48,dog,1,2,3,4\n")
    error(r"ann\.csv:2: image 'missing.jpg' not found", load_dataset, f)
    write(f, "a.jpg,64,48,dog,1,2,3,4\na.jpg,32,48,dog,1,2,3,4\n")
    error(r"ann\.csv:2: image a\.jpg is 32x48 here but 64x48 at .*ann\.csv:1", load_dataset, f)
    write(f, "a.jpg,64,48,dog,1,2\n")
    error(r"ann\.csv:1: 6 columns, expected filename,width", load_dataset, f)


# -- Flickr Logos 27 -----------------------------------------------------------------------------


def test_flickr27_duplicates_and_degenerate_boxes(tmp_path: Path) -> None:
    images = tmp_path / "flickr_logos_27_dataset_images"
    image(images / "144503924.jpg", 300, 200)
    image(images / "2451569770.jpg", 300, 200)
    listing = write(
        tmp_path / "flickr_logos_27_dataset_training_set_annotation.txt",
        "144503924.jpg Adidas 1 38 12 234 142\n"
        "144503924.jpg Adidas 1 38 12 234 142\n"
        "2451569770.jpg Adidas 1 242 208 258 208\n"  # degenerate
        "2451569770.jpg Apple 2 10 10 100 100\n",
    )
    write(tmp_path / "flickr_logos_27_dataset_query_set_annotation.txt", "123.jpg Adidas\n")
    assert detect_format(tmp_path) == "flickr27"
    assert detect_format(listing) == "flickr27"
    ds = load_dataset(tmp_path)
    assert ds.classes == ["Adidas", "Apple"]
    assert boxes(ds, "144503924.jpg") == [("Adidas", 38.0, 12.0, 234.0, 142.0)]
    assert boxes(ds, "2451569770.jpg") == [("Apple", 10.0, 10.0, 100.0, 100.0)]
    assert ds.report.dropped == 1
    text = " ".join(ds.report.warnings)
    assert "duplicate" in text and "annotation.txt:2" in text and "annotation.txt:3" in text


def test_flickr27_errors(tmp_path: Path) -> None:
    image(tmp_path / "1.jpg")
    f = write(tmp_path / "list_annotation.txt", "1.jpg Adidas 1 1 1 9 9\n1.jpg Adidas 1 1 1 9\n")
    error(r"list_annotation\.txt:2: expected 7 fields", load_dataset, f, "flickr27")
    write(f, "1.jpg Adidas 1 1 1 9 9\n2.jpg Adidas 1 1 1 9 9\n")
    error(r"list_annotation\.txt:2: image '2.jpg' not found", load_dataset, f, "flickr27")


# -- detection, round trips, synthesis, statistics -----------------------------------------------


def test_format_detection(tmp_path: Path) -> None:
    assert FORMATS == ("voc", "yolo", "coco", "csv", "flickr27")
    for fmt in ("voc", "yolo", "coco", "csv"):
        synthesize(tmp_path / fmt, 2, seed=1, fmt=fmt, width=64, height=48)
        assert detect_format(tmp_path / fmt) == fmt
    empty = tmp_path / "empty"
    empty.mkdir()
    error("cannot tell the dataset format", detect_format, empty)
    error("no such file or folder", load_dataset, tmp_path / "nope")
    error("unknown dataset format 'tfrecord'", load_dataset, tmp_path / "voc", "tfrecord")
    # labelImg saving both VOC and YOLO into one folder: ambiguous.
    both = tmp_path / "both"
    image(both / "a.jpg")
    write(both / "a.xml", voc_xml("a.jpg", [("x", "1", "1", "5", "5")]))
    write(both / "a.txt", "0 0.5 0.5 0.1 0.1\n")
    write(both / "classes.txt", "x\n")
    msg = error("several dataset formats fit", detect_format, both)
    assert "voc" in msg and "yolo" in msg
    assert len(load_dataset(both, "voc").samples) == len(load_dataset(both, "yolo").samples) == 1


def _float_dataset(tmp_path: Path) -> Dataset:
    a = image(tmp_path / "src" / "x" / "a.jpg", 64, 48)
    b = image(tmp_path / "src" / "y" / "a.jpg", 64, 48)  # same name, other folder
    c = image(tmp_path / "src" / "c.png", 80, 60)
    return Dataset(
        classes=["zeta", "alpha", "unused"],
        samples=[
            Sample(a, 64, 48, (Annotation(0, 1.4, 2.6, 30.2, 40.0), Annotation(1, 0.0, 0.0, 64.0, 48.0))),
            Sample(b, 64, 48, (Annotation(1, 10.0, 10.0, 20.0, 20.0),)),
            Sample(c, 80, 60, ()),
        ],
        source="test",
    )


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco", "csv"])
def test_write_then_read_round_trip(tmp_path: Path, fmt: str) -> None:
    ds = _float_dataset(tmp_path)
    written = write_dataset(ds, tmp_path / "out", fmt)
    assert [s.image.name for s in written.samples] == ["a.jpg", "a_1.jpg", "c.png"]
    back = load_dataset(tmp_path / "out")  # detected
    assert back.classes == ds.classes  # order and unused classes kept (classes.txt, names, categories)
    assert {s.image.name: (s.width, s.height) for s in back.samples} == {
        "a.jpg": (64, 48),
        "a_1.jpg": (64, 48),
        "c.png": (80, 60),
    }
    for orig, new in zip(written.samples, sorted(back.samples, key=lambda s: s.image.name)):
        assert len(orig.boxes) == len(new.boxes)
        for p, q in zip(orig.boxes, new.boxes):
            assert p.class_id == q.class_id
            for u, v in zip((p.xmin, p.ymin, p.xmax, p.ymax), (q.xmin, q.ymin, q.xmax, q.ymax)):
                assert abs(u - v) <= (0.5 if fmt in ("voc", "csv") else 0.01)
    assert (back.report.clipped, back.report.dropped) == (0, 0)
    error("not an empty folder", write_dataset, ds, tmp_path / "out", fmt)


def test_synthesize_is_deterministic_and_reads_back(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", 6, seed=7, fmt="yolo", width=160, height=120)
    again = synthesize(tmp_path / "b", 6, seed=7, fmt="yolo", width=160, height=120)
    other = synthesize(tmp_path / "c", 6, seed=8, fmt="yolo", width=160, height=120)
    assert first.classes == ["circle", "square", "triangle"]
    assert first.sha256() == again.sha256() != other.sha256()
    for name in ("000000.txt", "000005.txt"):
        assert (tmp_path / "a" / "labels" / name).read_bytes() == (
            tmp_path / "b" / "labels" / name
        ).read_bytes()
    assert sum(len(s.boxes) for s in first.samples) >= 6
    back = load_dataset(tmp_path / "a")
    for s, t in zip(first.samples, sorted(back.samples, key=lambda s: s.image.name)):
        assert [b.class_id for b in s.boxes] == [b.class_id for b in t.boxes]
        coords = [[(b.xmin, b.ymin, b.xmax, b.ymax) for b in x.boxes] for x in (s, t)]
        assert np.allclose(coords[0], coords[1], atol=0.01)
    png = synthesize(tmp_path / "d", 1, seed=7, fmt="voc", width=160, height=120, image_format="png")
    assert png.samples[0].image.suffix == ".png" and png.samples[0].boxes == first.samples[0].boxes
    busy = synthesize(tmp_path / "e", 2, seed=1, width=160, height=120, min_objects=5, max_objects=5)
    assert all(len(s.boxes) >= 4 for s in busy.samples)


def test_synthesize_rejects_bad_arguments(tmp_path: Path) -> None:
    error("at least 1", synthesize, tmp_path / "a", 0, seed=1)
    error("synthetic scenes: frame must be at least 16x16", synthesize, tmp_path / "a", 1, seed=1, width=8)
    error("synthetic scenes: .*unexpected keyword", synthesize, tmp_path / "a", 1, seed=1, colour=True)
    error("cannot write format 'flickr27'", synthesize, tmp_path / "a", 1, seed=1, fmt="flickr27")
    write(tmp_path / "full" / "x.txt", "x")
    error("not an empty folder", synthesize, tmp_path / "full", 1, seed=1)
    assert issubclass(DatasetError, EdgewatchError)


def test_describe_and_format_report(tmp_path: Path) -> None:
    ds = Dataset(
        classes=["a", "b", "c"],
        samples=[
            Sample(tmp_path / "1.jpg", 200, 100, (Annotation(0, 0, 0, 10, 10), Annotation(0, 0, 0, 50, 50))),
            Sample(tmp_path / "2.jpg", 200, 100, (Annotation(1, 0, 0, 100, 100),)),
            Sample(tmp_path / "3.jpg", 320, 240, ()),
        ],
        source="test",
    )
    ds.report.clipped, ds.report.dropped = 2, 1
    ds.report.warnings.extend(f"w{i}" for i in range(12))
    info = describe(ds)
    assert (info["images"], info["boxes"], info["images_without_boxes"]) == (3, 3, 1)
    assert info["classes"] == [
        {"id": 0, "name": "a", "images": 1, "boxes": 2},
        {"id": 1, "name": "b", "images": 1, "boxes": 1},
        {"id": 2, "name": "c", "images": 0, "boxes": 0},
    ]
    assert info["box_area"] == {"small": 1, "medium": 1, "large": 1}
    assert info["box_width_px"] == {"min": 10, "median": 50, "mean": pytest.approx(53.3, abs=0.1), "max": 100}
    assert info["box_height_rel"]["max"] == 1.0
    assert info["image_sizes"] == [
        {"width": 200, "height": 100, "images": 2},
        {"width": 320, "height": 240, "images": 1},
    ]
    assert info["report"]["clipped"] == 2
    json.dumps(info)
    text = format_report(info)
    assert "2 boxes clipped" in text and "1 dropped" in text and "12 warnings" in text
    assert "warning: w9" in text and "w10" not in text and "2 more warnings" in text
    assert re.search(r"\bb\s+1\s+1\b", text)
    empty = describe(Dataset(["a"], [Sample(tmp_path / "1.jpg", 10, 10, ())]))
    assert empty["box_width_px"] is None and "-" in format_report(empty)


def test_parse_classes(tmp_path: Path) -> None:
    assert parse_classes("a, b,c") == ["a", "b", "c"]
    f = write(tmp_path / "names.txt", "x\n\ny\n")
    assert parse_classes(str(f)) == ["x", "y"]
    m = write(tmp_path / "label_map.pbtxt", "item {\n id: 2\n name: 'b'\n}\nitem {\n id: 1\n name: 'a'\n}\n")
    assert parse_classes(str(m)) == ["a", "b"]
    error("listed twice", parse_classes, "a,a")
