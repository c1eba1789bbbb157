"""TTA: every view is de-augmented exactly, and views and models average probabilities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from podium.infer import TTA_SETS, Ensemble, View, tta_predict, tta_views


def identity(batch: torch.Tensor) -> torch.Tensor:
    return batch.float()


@pytest.mark.parametrize("name", sorted(TTA_SETS))
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (2, 3, 5, 9)])
def test_identity_model_returns_the_input_for_every_set(name, shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = tta_predict(identity, images, tta_views(name))
    assert out.shape == shape
    assert torch.equal(out, images.float())


def test_sets_have_the_expected_distinct_views():
    sizes = {"none": 1, "hflip": 2, "vflip": 2, "flip": 4, "d4": 8}
    x = torch.arange(12.0).view(1, 1, 3, 4)
    for name, count in sizes.items():
        views = tta_views(name)
        assert len(views) == count
        # Distinct views see distinct images (no view is repeated under another name).
        assert len({tuple(v.augment(x).flatten().tolist()) for v in views}) == count
    assert torch.equal(View(2, True).augment(x), x.flip(-2))  # "vflip" is an up-down flip


def test_multiscale_identity_returns_a_smooth_input():
    # Resizing is not a permutation: a smooth image comes back within interpolation error.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(24.0), indexing="ij")
    images = (100 + 60 * torch.sin(yy / 9) * torch.cos(xx / 7)).to(torch.uint8)[None, None]
    views = tta_views("flip", scales=[0.75, 1.0, 1.5])
    assert len(views) == 12
    out = tta_predict(identity, images, views)
    assert out.shape == images.shape
    assert (out - images.float()).abs().max() <= 3.0


@pytest.mark.parametrize("view", tta_views("d4"), ids=str)
def test_each_output_pixel_comes_from_where_that_pixel_went(view):
    # A non-symmetric "model" that reports, at every pixel, the position it saw it at. After
    # de-augmentation the output at (i, j) must name a position in the augmented image that
    # holds the original pixel (i, j) — the inverse transform routed it back correctly.
    h, w = 5, 8
    images = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)

    def where(batch):
        n, _, bh, bw = batch.shape
        rows = torch.arange(bh, dtype=torch.float32).view(1, 1, bh, 1).expand(n, 1, bh, bw)
        cols = torch.arange(bw, dtype=torch.float32).view(1, 1, 1, bw).expand(n, 1, bh, bw)
        return torch.cat([rows, cols], 1)

    out = tta_predict(where, images, [view])
    augmented = view.augment(images)[0, 0]
    for i in range(h):
        for j in range(w):
            a, b = int(out[0, 0, i, j]), int(out[0, 1, i, j])
            assert augmented[a, b] == images[0, 0, i, j]


def test_forward_batch_limit_gives_the_same_result_in_more_passes():
    images = torch.randint(0, 256, (3, 3, 6, 10), dtype=torch.uint8)
    calls = []

    def model(batch):
        calls.append(len(batch))
        ramp = torch.arange(float(batch.shape[-1]))  # position-dependent, so views differ
        return batch.float().mean(1, keepdim=True) + ramp

    whole = tta_predict(model, images, tta_views("d4"))
    assert calls == [12, 12]  # the 4 views of each orientation as extra batch items
    calls.clear()
    limited = tta_predict(model, images, tta_views("d4"), max_batch=5)
    assert max(calls) <= 5 and sum(calls) == 24
    assert torch.allclose(whole, limited)


class LogitModel(nn.Module):
    """Logits +8 where the pixel's column index is < 2 in the frame it sees, -2 elsewhere, so
    the left-right flipped view disagrees with the plain one at the image's edges."""

    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        n, _, h, w = x.shape
        left = (torch.arange(w) < 2).float().view(1, 1, 1, w).expand(n, 1, h, w)
        return left * 10.0 - 2.0 + self.offset


def test_views_average_probabilities_not_logits():
    images = torch.zeros(1, 3, 4, 6, dtype=torch.uint8)
    ensemble = Ensemble([LogitModel()], "binary", tta_views("hflip"), torch.device("cpu"))
    out = ensemble(images)[0, 0]
    high, low = torch.sigmoid(torch.tensor(8.0)), torch.sigmoid(torch.tensor(-2.0))
    # Column 0: the plain view says +8, the flipped view (column 5 of its frame) says -2.
    assert torch.allclose(out[:, 0], (high + low) / 2)
    assert not torch.allclose(out[:, 0], torch.sigmoid(torch.tensor(3.0)))  # mean of logits
    assert torch.allclose(out[:, 2:4], low.expand(4, 2))


def test_models_average_probabilities_with_their_weights():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    models = [LogitModel(offset=0.0), LogitModel(offset=-6.0)]
    ensemble = Ensemble(models, "binary", tta_views("none"), "cpu", weights=[3, 1])
    out = ensemble(images)[0, 0, 0, 0]
    expected = 0.75 * torch.sigmoid(torch.tensor(8.0)) + 0.25 * torch.sigmoid(torch.tensor(2.0))
    assert torch.isclose(out, expected)


def test_models_at_their_own_resolution_return_the_input_size():
    images = torch.zeros(2, 3, 30, 40, dtype=torch.uint8)
    ensemble = Ensemble(
        [LogitModel(), LogitModel()], "binary", tta_views("flip"), "cpu",
        input_sizes=[None, (16, 16)],
    )  # fmt: skip
    assert ensemble(images).shape == (2, 1, 30, 40)


def test_unknown_set_names_the_known_ones():
    with pytest.raises(Exception, match="tta=d8: unknown TTA set .*d4"):
        tta_views("d8")
