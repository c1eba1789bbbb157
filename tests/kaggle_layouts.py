"""Small generated copies of real Kaggle competition downloads, in their real shape.

Each function returns the files of a competition as Kaggle lists and serves them (the fake zips
them into the competition archive that `DownloadDataFiles` redirects to), so the archives inside
it (`train.zip`, `train_masks.csv.zip`, ...) stay packed, as on Kaggle. Sizes and counts are
small; names, nesting, columns and encodings are the real ones. Where each shape comes from:

- TGS Salt: the competition's data page lists `train.zip`, `test.zip`, `train.csv`, `depths.csv`,
  `sample_submission.csv`; `train.zip` holds `images/` and `masks/` at its root, `test.zip`
  holds `images/` (issue #12, from the real download; ../shared/data/tgs_salt/README.md has the
  real `train.csv`: `id,rle_mask`, column-major RLE, 101x101 PNGs).
- Carvana: `train.zip`, `train_hq.zip`, `train_masks.zip`, `test.zip`, `test_hq.zip` and the
  zipped CSVs `train_masks.csv.zip`, `metadata.csv.zip`, `sample_submission.csv.zip` (issue
  #12); each image archive holds a folder of its own name (`train/<car>_<view>.jpg`,
  `train_masks/<car>_<view>_mask.gif`), which is how the 1st-place code reads them
  (asanakoy/kaggle_carvana_segmentation: input dir with train_hq/, test_hq/, train_masks/).
  train_masks.csv is `img,rle_mask`, ROW-major 1-based RLE (../shared/data/kaggle_masks/README.md).
- Ultrasound Nerve: `train.zip`, `test.zip`, `train_masks.csv.zip`, `sample_submission.csv.zip`
  (issue #12); `train_masks.csv.zip` holds one `train_masks.csv` (`subject,img,pixels`,
  column-major 1-based RLE; the real file is recorded in ../shared/data/kaggle_masks/README.md);
  `train.zip` holds `train/<subject>_<img>.tif` and `train/<subject>_<img>_mask.tif`.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from kaggle_fake import make_zip
from PIL import Image

from podium.rle import rle_encode


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _blob(rng: np.random.Generator, shape: tuple[int, int], empty: bool = False) -> np.ndarray:
    """A 0/1 mask holding one rectangle (or nothing)."""
    mask = np.zeros(shape, np.uint8)
    if not empty:
        h, w = shape
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 3, x : x + w // 3] = 1
    return mask


def _image(rng: np.random.Generator, mask: np.ndarray, channels: int = 3) -> np.ndarray:
    noise = rng.integers(0, 60, (*mask.shape, channels), dtype=np.uint8)
    image = noise + (mask[..., None] * 150).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def tgs_salt(train_ids: list[str], test_ids: list[str], seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    images, masks, rows = {}, {}, []
    for n, image_id in enumerate(train_ids):
        mask = _blob(rng, (101, 101), empty=n % 3 == 0)  # about a third empty, as in TGS
        images[f"images/{image_id}.png"] = _png(_image(rng, mask, 1))
        masks[f"masks/{image_id}.png"] = _png(mask * 255)
        rows.append(f"{image_id},{rle_encode(mask, 'F', 1) if mask.any() else ''}\n")
    test = {f"images/{i}.png": _png(_image(rng, _blob(rng, (101, 101)), 1)) for i in test_ids}
    ids = train_ids + test_ids
    return {
        "train.zip": make_zip(images | masks),
        "test.zip": make_zip(test),
        "train.csv": ("id,rle_mask\n" + "".join(rows)).encode(),
        "depths.csv": ("id,z\n" + "".join(f"{i},{500 + n}\n" for n, i in enumerate(ids))).encode(),
        "sample_submission.csv": (
            "id,rle_mask\n" + "".join(f"{i},1 1\n" for i in test_ids)
        ).encode(),
    }


CARVANA_SHAPE = (48, 72)  # (H, W); the real images are 1280x1918


def _gif(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask * 255).save(buffer, format="GIF")
    return buffer.getvalue()


def _jpg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def carvana(cars: int = 6, views: int = 2, test_cars: int = 2, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    train, train_hq, train_masks, rows = {}, {}, {}, []
    for car in range(cars):
        for view in range(1, views + 1):
            name = f"{car:04x}c4r{car:06d}_{view:02d}"
            mask = _blob(rng, CARVANA_SHAPE)
            image = _image(rng, mask)
            train[f"train/{name}.jpg"] = _jpg(image)
            train_hq[f"train_hq/{name}.jpg"] = _jpg(image)
            train_masks[f"train_masks/{name}_mask.gif"] = _gif(mask)
            rows.append(f"{name}.jpg,{rle_encode(mask, 'C', 1)}\n")
    test_names = [f"{c:04x}te57{c:06d}_{v:02d}.jpg" for c in range(test_cars) for v in (1, 2)]
    test = {f"test/{n}": _jpg(_image(rng, _blob(rng, CARVANA_SHAPE))) for n in test_names}
    test_hq = {f"test_hq/{n[5:]}": data for n, data in test.items()}
    metadata = "id,year,make,model,trim1,trim2\n" + "".join(
        f"{n.split('_')[0]},2017,Fake,Car,A,B\n" for n in sorted({k[6:] for k in train})
    )
    return {
        "train.zip": make_zip(train),
        "train_hq.zip": make_zip(train_hq),
        "train_masks.zip": make_zip(train_masks),
        "test.zip": make_zip(test),
        "test_hq.zip": make_zip(test_hq),
        "train_masks.csv.zip": make_zip(
            {"train_masks.csv": ("img,rle_mask\n" + "".join(rows)).encode()}
        ),
        "metadata.csv.zip": make_zip({"metadata.csv": metadata.encode()}),
        "sample_submission.csv.zip": make_zip(
            {
                "sample_submission.csv": (
                    "img,rle_mask\n" + "".join(f"{n},1 1\n" for n in test_names)
                ).encode()
            }  # fmt: skip
        ),
    }


NERVE_SHAPE = (42, 58)  # (H, W); the real frames are 420x580


def _tif(image: np.ndarray) -> bytes:
    return cv2.imencode(".tif", image)[1].tobytes()


def ultrasound_nerve(subjects: int = 6, frames: int = 2, tests: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    train, rows = {}, []
    for subject in range(1, subjects + 1):
        for frame in range(1, frames + 1):
            mask = _blob(rng, NERVE_SHAPE, empty=frame % 2 == 0)  # many frames show no nerve
            train[f"train/{subject}_{frame}.tif"] = _tif(_image(rng, mask, 1))
            train[f"train/{subject}_{frame}_mask.tif"] = _tif(mask * 255)
            pixels = rle_encode(mask, "F", 1) if mask.any() else ""
            rows.append(f"{subject},{frame},{pixels}\n")
    test_ids = range(1, tests + 1)
    test = {f"test/{i}.tif": _tif(_image(rng, _blob(rng, NERVE_SHAPE), 1)) for i in test_ids}
    sample = "img,pixels\n" + "".join(f"{i},\n" for i in test_ids)
    return {
        "train.zip": make_zip(train),
        "test.zip": make_zip(test),
        "train_masks.csv.zip": make_zip(
            {"train_masks.csv": ("subject,img,pixels\n" + "".join(rows)).encode()}
        ),
        "sample_submission.csv.zip": make_zip({"sample_submission.csv": sample.encode()}),
    }
