import numpy as np
import pytest

from edgeseg.runtime.metrics import IGNORE, ConfusionMatrix, mask_iou


def test_miou_over_present_classes_with_ignore():
    cm = ConfusionMatrix(3)
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE]])
    pred = np.array([[0, 0, 1, 0], [0, 2, 1, 2]])
    cm.update(truth, pred)
    # class 0: tp 3, fn 1, fp 1 -> 3/5; class 1: tp 2, fn 1 -> 2/3; class 2 absent from truth -> not averaged
    iou = cm.iou()
    assert iou[0] == pytest.approx(3 / 5) and iou[1] == pytest.approx(2 / 3) and np.isnan(iou[2])
    assert cm.miou() == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_accumulates_over_images_not_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((1, 10), int), np.zeros((1, 10), int))
    cm.update(np.array([[1, 1]]), np.array([[0, 1]]))
    assert cm.iou()[1] == pytest.approx(0.5) and cm.iou()[0] == pytest.approx(10 / 11)


def test_errors_and_mask_iou():
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(2).update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="out of range"):
        ConfusionMatrix(2).update(np.full((2, 2), 1), np.full((2, 2), 5))
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12) and mask_iou(a & False, b & False) == 1.0
