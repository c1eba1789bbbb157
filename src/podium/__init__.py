"""podium: a workbench for Kaggle and challenge image-segmentation competitions.

The public API for competition adapters (competitions/<slug>/adapter.py) is what this module
exports; everything else is reached through the `podium` command.
"""

from podium.competition import Competition, Sample, SubmissionFormat, load_competition
from podium.io import PodiumError, atomic_write, read_csv_rows, read_gray, read_image
from podium.masks import read_mask_file, read_mask_png
from podium.metrics import dice, iou, tgs_map
from podium.rle import RleError, rle_decode, rle_encode

__version__ = "0.1.0"

__all__ = [
    "Competition",
    "Sample",
    "SubmissionFormat",
    "load_competition",
    "PodiumError",
    "RleError",
    "atomic_write",
    "read_csv_rows",
    "read_gray",
    "read_image",
    "read_mask_file",
    "read_mask_png",
    "rle_encode",
    "rle_decode",
    "dice",
    "iou",
    "tgs_map",
    "__version__",
]
