"""The datasets recipec reads and the image files it takes: one record per fact, torch-free.

The recipe language (``data.dataset``), the readers (:mod:`recipec.data.datasets`), the input
checks and the predictor all read these, so a dataset or an image suffix is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "IN_MEMORY", "MANIFEST_MAX_BYTES", "MANIFEST_SUFFIXES", "TORCHVISION",
           "VAL_FOLDERS", "DatasetName", "TorchvisionDataset"]

# what data.dataset may name; the JSON schema lists them in this order
DatasetName = Literal["imagefolder", "manifest", "digits", "fake", "cifar10", "cifar100", "mnist", "fashionmnist"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
# held in memory, no files: a loader worker would only add inter-process copies
IN_MEMORY = ("digits", "fake")
# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder reads (and the predictor takes)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# dataset: manifest reads these files, at most this large (~2 million rows of long paths)
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
MANIFEST_MAX_BYTES = 256 << 20
# split folders: the names a validation folder may have, first found wins
VAL_FOLDERS = ("val", "valid", "validation")


@dataclass(frozen=True)
class TorchvisionDataset:
    """A torchvision dataset recipec reads from ``root`` (never downloads)."""

    name: str         # the class in torchvision.datasets
    folder: str       # what torchvision reads under root
    num_classes: int


TORCHVISION = {
    "cifar10": TorchvisionDataset("CIFAR10", "cifar-10-batches-py", 10),
    "cifar100": TorchvisionDataset("CIFAR100", "cifar-100-python", 100),
    "mnist": TorchvisionDataset("MNIST", "MNIST/raw", 10),
    "fashionmnist": TorchvisionDataset("FashionMNIST", "FashionMNIST/raw", 10),
}
