"""Datasets: readers of common labelling formats into one internal form, writers, synthesis."""

from .dataset import Annotation, Dataset, ImportReport, Sample

__all__ = ["Annotation", "Dataset", "ImportReport", "Sample"]
