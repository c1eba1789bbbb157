"""Tiled prediction: tiles cover the image, merge without seams and crop exactly."""

from __future__ import annotations

import pytest
import torch

from podium import tiles
from podium.infer import predict_images, predict_tiled, tile_starts, tile_window


@pytest.mark.parametrize("length,tile,overlap", [(53, 16, 4), (37, 16, 0), (16, 16, 4), (9, 16, 4)])
def test_tiles_cover_the_length_and_overlap_enough(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, length) == length  # the last tile is flush with the end
    steps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(0 < s <= tile - overlap for s in steps)


def test_window_is_smooth_positive_and_peaks_in_the_centre():
    window = tile_window(16, 11)
    assert window.shape == (16, 11) and window.min() > 0
    assert window[7:9, 5].min() == window.max()
    assert window[0, 0] < window[4, 3] < window[7, 5]


@pytest.mark.parametrize("size", [(37, 53), (16, 50), (41, 16), (10, 12)])
def test_identity_model_reconstructs_the_image_exactly(size):
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    calls = []

    def identity(batch):
        calls.append(tuple(batch.shape))
        return batch.float()

    out = predict_tiled(identity, image, tile_size=16, overlap=0.25, batch_size=4)
    assert out.shape == (3, *size)  # no oversize output, nothing missing
    assert torch.allclose(out, image.float(), atol=1e-4)
    assert torch.equal(out.round().to(torch.uint8), image)
    assert all(n <= 4 and h <= 16 and w <= 16 for n, _, h, w in calls)


def test_tiles_are_weighted_towards_their_centres(monkeypatch):
    # A model that answers 1 in the central half of each tile and 0 near its edges: where one
    # tile's centre meets its neighbour's edge, the smooth window trusts the centre more than a
    # flat window (plain averaging) does.
    image = torch.zeros(1, 40, 40, dtype=torch.uint8)

    def centre_only(batch):
        out = torch.zeros(batch.shape[0], 1, *batch.shape[-2:])
        out[..., 4:12, 4:12] = 1.0
        return out

    smooth = predict_tiled(centre_only, image, tile_size=16, overlap=0.5, batch_size=8)[0]
    monkeypatch.setattr(tiles, "tile_window", lambda h, w, device: torch.ones(h, w))
    flat = predict_tiled(centre_only, image, tile_size=16, overlap=0.5, batch_size=8)[0]
    inside = (slice(4, 36), slice(4, 36))  # every pixel here is in some tile's centre
    assert flat[inside].min() == 0.25 and smooth[inside].min() > 0.5
    assert (smooth[inside] >= flat[inside]).all()


def test_batches_tile_only_large_images_and_crop_padding():
    # A padded loader batch: a 20x30 image (tiled at 16) and a 12x12 one (whole).
    images = torch.zeros(2, 3, 20, 30, dtype=torch.uint8)
    images[0] = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    images[1, :, :12, :12] = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    shapes = []

    def identity(batch):
        shapes.append(tuple(batch.shape[-2:]))
        return batch.float()

    predicted = predict_images(identity, images, [(20, 30), (12, 12)], tile_size=16, tile_batch=4)
    out = [probs for probs, _ in predicted]
    assert out[0].shape == (3, 20, 30) and out[1].shape == (3, 12, 12)
    assert torch.equal(out[0].round().to(torch.uint8), images[0])
    assert torch.equal(out[1], images[1, :, :12, :12].float())
    assert (12, 12) in shapes and max(h for h, _ in shapes) <= 16
