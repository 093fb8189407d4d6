"""Datasets: readers of common labelling formats into one internal form, writers, synthesis."""

from ..errors import DatasetError
from .dataset import Annotation, Dataset, ImportReport, Sample
from .readers import FORMATS, detect_format, load_dataset, parse_classes
from .stats import describe, format_report
from .synth import synthesize
from .writers import WRITE_FORMATS, write_dataset

__all__ = [
    "FORMATS",
    "WRITE_FORMATS",
    "Annotation",
    "Dataset",
    "DatasetError",
    "ImportReport",
    "Sample",
    "describe",
    "detect_format",
    "format_report",
    "load_dataset",
    "parse_classes",
    "synthesize",
    "write_dataset",
]
