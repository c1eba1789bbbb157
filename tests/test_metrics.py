"""Competition metrics on hand-made masks; every expected value is worked out in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from podium.io import PodiumError
from podium.metrics import METRICS, dice, endovis_dice, endovis_iou, get_metric, iou, tgs_map


def box(shape, rows, cols, value=1):
    mask = np.zeros(shape, np.uint8)
    mask[rows, cols] = value
    return mask


EMPTY = np.zeros((4, 4), np.uint8)
# pred: rows 0-1 x cols 0-1 = 4 px; truth: rows 0-1 x cols 1-3 = 6 px; overlap col 1 = 2 px.
PRED_A = box((4, 4), slice(0, 2), slice(0, 2))
TRUE_A = box((4, 4), slice(0, 2), slice(1, 4))


def test_dice_and_iou_by_hand():
    assert dice(PRED_A, TRUE_A) == pytest.approx(2 * 2 / (4 + 6))  # 0.4
    assert iou(PRED_A, TRUE_A) == pytest.approx(2 / (4 + 6 - 2))  # 0.25
    assert dice(TRUE_A, TRUE_A) == 1.0 and iou(TRUE_A, TRUE_A) == 1.0


@pytest.mark.parametrize("metric", [dice, iou, tgs_map, endovis_iou, endovis_dice])
def test_empty_mask_rules(metric):
    assert metric(EMPTY, EMPTY) == 1.0  # nothing to find, nothing found
    assert metric(PRED_A, EMPTY) == 0.0  # a false positive on an empty image
    assert metric(EMPTY, TRUE_A) == 0.0  # a miss


def test_mean_dice_over_images_with_the_empty_rule():
    # Images: the overlap case (0.4), an empty image predicted empty (1), an empty image with a
    # false positive (0): the competition score is their mean, 1.4 / 3.
    per_image = [dice(PRED_A, TRUE_A), dice(EMPTY, EMPTY), dice(PRED_A, EMPTY)]
    assert np.mean(per_image) == pytest.approx(1.4 / 3)


def test_tgs_map_by_hand():
    shape = (5, 4)
    truth = box(shape, slice(0, 5), slice(0, 2))  # 10 px
    eight = box(shape, slice(0, 4), slice(0, 2))  # 8 px inside: IoU = 8/10 = 0.8
    # hits where IoU > t: t = 0.50, 0.55, 0.60, 0.65, 0.70, 0.75 -> 6 of 10 (0.80 is not > 0.80)
    assert tgs_map(eight, truth) == pytest.approx(0.6)
    twenty = box((5, 4), slice(0, 5), slice(0, 4))  # 20 px
    eleven = twenty.copy().ravel()
    eleven[11:] = 0
    # IoU = 11/20 = 0.55 exactly: a hit at 0.50 only
    assert tgs_map(eleven.reshape(5, 4), twenty) == pytest.approx(0.1)
    assert tgs_map(PRED_A, TRUE_A) == 0.0  # IoU 0.25: below every threshold
    assert tgs_map(truth, truth) == 1.0  # IoU 1 > 0.95
    with pytest.raises(ValueError):
        tgs_map(truth, truth, task="multiclass")


# Label maps (0 = background), 4x6:
#   truth: class 1 at row 0, cols 0-2 (3 px); class 2 at row 1, cols 0-1 (2 px)
#   pred:  class 1 at row 0, cols 0-1 and col 3 (3 px, 2 of them right); class 2 exactly right;
#          class 3 at (3, 5): a class the frame does not have.
TRUTH_MC = np.zeros((4, 6), np.uint8)
TRUTH_MC[0, 0:3] = 1
TRUTH_MC[1, 0:2] = 2
PRED_MC = np.zeros((4, 6), np.uint8)
PRED_MC[0, [0, 1, 3]] = 1
PRED_MC[1, 0:2] = 2
PRED_MC[3, 5] = 3


def test_robotic_instrument_iou_by_hand():
    # class 1: overlap 2, union 3 + 3 - 2 = 4 -> IoU 0.5, Dice 4/6; class 2: IoU = Dice = 1.
    # EndoVis averages over the classes in the ground truth (1 and 2): class 3 is not counted.
    assert endovis_iou(PRED_MC, TRUTH_MC, "multiclass") == pytest.approx((0.5 + 1) / 2)
    assert endovis_dice(PRED_MC, TRUTH_MC, "multiclass") == pytest.approx((4 / 6 + 1) / 2)
    # podium's plain multiclass IoU/Dice also count class 3 (IoU 0): mean over 3 classes.
    assert iou(PRED_MC, TRUTH_MC, "multiclass") == pytest.approx((0.5 + 1 + 0) / 3)
    assert dice(PRED_MC, TRUTH_MC, "multiclass") == pytest.approx((4 / 6 + 1 + 0) / 3)
    # A frame without instruments: right only when nothing is predicted.
    blank = np.zeros_like(TRUTH_MC)
    assert endovis_iou(PRED_MC, blank, "multiclass") == 0.0
    assert endovis_iou(blank, blank, "multiclass") == 1.0
    # Binary masks: plain IoU.
    assert endovis_iou(PRED_A, TRUE_A) == pytest.approx(0.25)


def test_multilabel_is_the_mean_over_channels():
    pred = np.stack([PRED_A, EMPTY])
    truth = np.stack([TRUE_A, EMPTY])
    assert dice(pred, truth, "multilabel") == pytest.approx((0.4 + 1.0) / 2)


def test_registry():
    assert {"dice", "iou", "tgs_map", "endovis_iou", "endovis_dice"} <= set(METRICS)
    assert get_metric("endovis_iou") is endovis_iou
    with pytest.raises(PodiumError, match="unknown metric 'f2'"):
        get_metric("f2")
