"""Evaluation metrics on small hand-computed cases."""
import math

import pytest
import torch

from fastface.eval import (identification_with_distractors, map_at_r, precision_at_1, r_precision,
                           retrieval_metrics, tpr_at_fpr, verification_accuracy)


def test_retrieval_metrics_hand_computed():
    # Query label 1 with R = 3 relevant; retrieved labels: 1, 0, 1, 1, 0
    ranked = torch.tensor([[1, 0, 1, 1, 0]])
    q = torch.tensor([1])
    R = torch.tensor([3])
    assert precision_at_1(ranked, q) == 1.0
    assert r_precision(ranked, q, R) == pytest.approx(2 / 3)        # top-3 holds 2 relevant
    assert map_at_r(ranked, q, R) == pytest.approx((1 / 1 + 2 / 3) / 3)  # ranks 1 and 3 within R


def test_map_at_r_misses_past_k_and_skips_r_zero():
    ranked = torch.tensor([[2, 2], [5, 5]])
    q = torch.tensor([2, 7])
    R = torch.tensor([4, 0])  # only 2 of 4 relevant retrieved; query 2 has none in the gallery
    assert map_at_r(ranked, q, R) == pytest.approx((1 + 1) / 4)
    assert r_precision(ranked, q, R) == pytest.approx(2 / 4)
    assert precision_at_1(ranked, q, R) == 1.0


def test_retrieval_metrics_from_indices_with_exclude_self():
    gallery = torch.tensor([0, 0, 1, 1, 1])
    # leave-one-out rankings of every gallery item (self excluded)
    ranked = torch.tensor([[1, 2, 3, 4], [2, 0, 3, 4], [3, 4, 0, 1], [0, 2, 4, 1], [2, 3, 0, 1]])
    m = retrieval_metrics(ranked, gallery, gallery, exclude_self=True)
    assert m["p_at_1"] == pytest.approx(3 / 5)  # queries 1 and 3 retrieve another identity first
    # R = 1, 1, 2, 2, 2 -> r-precision 1, 0, 1, 1/2, 1
    assert m["r_precision"] == pytest.approx((1 + 0 + 1 + 0.5 + 1) / 5)
    # MAP@R: 1, 0, 1, (1/2 * 1/2) = 0.25, 1
    assert m["map_at_r"] == pytest.approx((1 + 0 + 1 + 0.25 + 1) / 5)
    assert m["n_queries"] == 5 and m["n_skipped"] == 0


def test_verification_accuracy_best_threshold():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.2] * 5)
    same = torch.tensor([True, True, False, False] * 5)
    out = verification_accuracy(scores, same, n_folds=5)
    assert out["accuracy"] == 1.0 and out["std"] == 0.0
    assert 0.3 < out["threshold"] <= 0.8 + 1e-6  # scores are float32
    noisy = verification_accuracy(torch.tensor([0.9, 0.4, 0.6, 0.1] * 5), same, n_folds=5)
    assert noisy["accuracy"] == pytest.approx(0.75)  # one of four pairs is always on the wrong side
    with pytest.raises(ValueError, match="n_folds"):
        verification_accuracy(scores, same, n_folds=1)


def test_tpr_at_fpr():
    scores = torch.tensor([0.9, 0.7, 0.5, 0.8, 0.4, 0.3, 0.2, 0.1])
    same = torch.tensor([True, True, True, False, False, False, False, False])
    out = tpr_at_fpr(scores, same, fprs=(0.0, 0.1, 0.2))
    assert out[0.0] == pytest.approx(1 / 3)   # no negative may pass: threshold above 0.8
    assert out[0.1] == pytest.approx(1 / 3)   # 1 of 5 negatives is already 0.2
    assert out[0.2] == pytest.approx(1.0)     # threshold 0.5 lets only the 0.8 negative through


def test_identification_with_distractors():
    probes = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    assert identification_with_distractors(probes, labels, far) == 1.0
    close = torch.tensor([[1.0, 0.01]])  # closer to probes 0 and 1 than they are to each other
    assert identification_with_distractors(probes, labels, close) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="two probe images"):
        identification_with_distractors(probes[:1], labels[:1], far)


def test_label_type_errors():
    with pytest.raises(TypeError, match="integer labels"):
        precision_at_1(torch.rand(2, 3), torch.tensor([0, 1]))
    assert math.isnan(r_precision(torch.tensor([[1]]), torch.tensor([1]), torch.tensor([0])))
