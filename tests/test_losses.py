"""Every loss formula against values computed by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from segmentation_models_pytorch.losses import DiceLoss

from podium.config import compose_config
from podium.losses import SoftDiceLoss, build_loss


def logits_of(p: list) -> torch.Tensor:
    return torch.logit(torch.tensor(p, dtype=torch.float64))


# Image A: p = [[.8, .2], [.6, .1]], t = [[1, 0], [1, 0]] -> I = 1.4, sum p = 1.7, sum t = 2.
# Image B: p = .1 everywhere, t empty             -> I = 0,   sum p = 0.4, sum t = 0.
IMAGE_A = ([[0.8, 0.2], [0.6, 0.1]], [[1.0, 0.0], [1.0, 0.0]])
IMAGE_B = ([[0.1, 0.1], [0.1, 0.1]], [[0.0, 0.0], [0.0, 0.0]])


def batch(*images):
    probs = torch.stack([logits_of(p)[None] for p, _ in images])
    targets = torch.stack([torch.tensor(t)[None] for _, t in images])
    return probs, targets


def test_soft_dice_single_image_by_hand():
    logits, target = batch(IMAGE_A)
    loss = SoftDiceLoss("binary", "batch", smooth=1.0)(logits, target)
    # (2 * 1.4 + 1) / (1.7 + 2 + 1) = 3.8 / 4.7
    assert loss.item() == pytest.approx(1 - 3.8 / 4.7, abs=1e-6)


def test_soft_dice_batch_vs_image_reduction_by_hand():
    logits, target = batch(IMAGE_A, IMAGE_B)
    batch_loss = SoftDiceLoss("binary", "batch", smooth=1.0)(logits, target)
    image_loss = SoftDiceLoss("binary", "image", smooth=1.0)(logits, target)
    # batch: I = 1.4, sum p = 2.1, sum t = 2  -> 3.8 / 5.1
    assert batch_loss.item() == pytest.approx(1 - 3.8 / 5.1, abs=1e-6)
    # image: mean(3.8 / 4.7, (0 + 1) / (0.4 + 0 + 1))
    assert image_loss.item() == pytest.approx(1 - (3.8 / 4.7 + 1 / 1.4) / 2, abs=1e-6)


def test_empty_truth_and_empty_prediction_cost_nothing():
    logits = torch.full((2, 1, 4, 4), -30.0)
    target = torch.zeros(2, 1, 4, 4)
    for reduction in ("batch", "image"):
        assert SoftDiceLoss("binary", reduction)(logits, target).item() == pytest.approx(
            0, abs=1e-6
        )


def test_batch_reduction_matches_smp_dice_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 1, 8, 8) > 0.5).float()
    # smp 0.6 computes Dice as a Tversky score, (I + s) / (I + FP/2 + FN/2 + s), which is
    # (2I + 2s) / (P + T + 2s): its `smooth` counts twice compared with ours.
    ours = SoftDiceLoss("binary", "batch", smooth=2.0)(logits, target)
    theirs = DiceLoss("binary", from_logits=True, smooth=1.0)(logits, target)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_multiclass_soft_dice_by_hand():
    # pixel 1: p = (.7, .2, .1), truth class 0; pixel 2: p = (.1, .3, .6), truth class 2
    logits = torch.log(torch.tensor([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]]))[None, :, None, :]
    target = torch.tensor([[[0, 2]]])
    loss = SoftDiceLoss("multiclass", "batch", smooth=1.0)(logits, target)
    # class 0: (1.4+1)/(0.8+1+1); class 1: (0+1)/(0.5+0+1); class 2: (1.2+1)/(0.7+1+1)
    expected = 1 - (2.4 / 2.8 + 1 / 1.5 + 2.2 / 2.7) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_bce_dice_weights_from_config():
    cfg = compose_config("train", ["loss=bce_dice", "loss.weights.bce=0.25", "loss.weights.dice=2"])
    loss_fn = build_loss(cfg.loss, "binary")
    logits, target = batch(IMAGE_A)
    total = loss_fn(logits, target).item()
    p = [0.8, 0.2, 0.6, 0.1]
    t = [1, 0, 1, 0]
    bce = (
        -sum(ti * math.log(pi) + (1 - ti) * math.log(1 - pi) for pi, ti in zip(p, t, strict=True))
        / 4
    )
    assert total == pytest.approx(0.25 * bce + 2 * (1 - 3.8 / 4.7), abs=1e-5)
    assert set(loss_fn.last_terms) == {"bce", "dice"}


@pytest.mark.parametrize("name", ["lovasz", "focal_dice"])
def test_other_presets_build_and_give_gradients(name):
    cfg = compose_config("train", [f"loss={name}"])
    loss_fn = build_loss(cfg.loss, "binary")
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = loss_fn(logits, (torch.rand(2, 1, 8, 8) > 0.5).float())
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0


def test_unknown_or_empty_loss_terms_are_rejected():
    base = compose_config("train").loss
    with pytest.raises(KeyError, match="hinge"):
        build_loss(OmegaConf.merge(base, {"weights": {"hinge": 1.0}}), "binary")
    with pytest.raises(ValueError, match="every weight is zero"):
        build_loss(OmegaConf.merge(base, {"weights": {"bce": 0, "dice": 0}}), "binary")
