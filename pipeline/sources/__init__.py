"""Where images come from: folders of images (``label``) and existing datasets (``convert``)."""

from __future__ import annotations

from pipeline.formats.data_yaml import SPLITS
from pipeline.sources.datasets import SourceDataset, read_dataset
from pipeline.sources.folders import assign_split, find_images, parse_split, plan_items
from pipeline.sources.labels import to_instances

__all__ = [
    "SPLITS",
    "SourceDataset",
    "assign_split",
    "find_images",
    "parse_split",
    "plan_items",
    "read_dataset",
    "to_instances",
]
