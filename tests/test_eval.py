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
    assert tpr_at_fpr(scores, same, fprs=(f for f in (0.0, 0.2))) == {0.0: out[0.0], 0.2: out[0.2]}


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


# ----------------------------------------------------------------------------- bad input (issue 11, 1.13)

@pytest.mark.parametrize("call,exc,words", [
    (lambda: verification_accuracy(torch.tensor([0.9, float("nan"), 0.3, 0.2]), torch.tensor([1, 1, 0, 0]).bool(), 2),
     ValueError, ["scores", "NaN"]),
    (lambda: tpr_at_fpr(torch.tensor([0.9, 0.8, float("inf"), 0.1]), torch.tensor([1, 1, 0, 0]).bool()),
     ValueError, ["scores", "NaN or inf"]),
    (lambda: verification_accuracy(torch.rand(4), torch.rand(4), 2), TypeError, ["same", "float32"]),
    (lambda: verification_accuracy(torch.rand(4), torch.tensor([0, 1, 2, 0]), 2), TypeError, ["same", "0 and 1"]),
    (lambda: verification_accuracy(torch.rand(4), torch.ones(5).bool(), 2), ValueError, ["(4,)", "(5,)"]),
    (lambda: verification_accuracy(torch.rand(4), torch.ones(4).bool(), 2.0), TypeError, ["n_folds", "float"]),
    (lambda: tpr_at_fpr(torch.rand(4), torch.tensor([1, 0, 1, 0]).bool(), fprs=(1.5,)), ValueError, ["fprs", "1.5"]),
    (lambda: tpr_at_fpr(torch.rand(4), torch.ones(4).bool()), ValueError, ["4 positive", "0 negative"]),
    (lambda: retrieval_metrics(torch.tensor([[-1, 0]]), torch.tensor([0]), torch.tensor([0, 1, 0])),
     ValueError, ["ranked_indices", "[0, 2]", "-1"]),
    (lambda: retrieval_metrics(torch.tensor([[3, 0]]), torch.tensor([0]), torch.tensor([0, 1, 0])),
     ValueError, ["ranked_indices", "[0, 2]", "3"]),
    (lambda: retrieval_metrics(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), torch.tensor([0, 1])),
     TypeError, ["ranked_indices", "float32"]),
    (lambda: retrieval_metrics(torch.tensor([[0, 1]]), torch.tensor([0, 1]), torch.tensor([0, 1])),
     ValueError, ["ranked_indices", "query_labels", "(1, 2)", "(2,)"]),
    (lambda: r_precision(torch.tensor([[1]]), torch.tensor([1]), torch.tensor([-2])), ValueError, ["n_relevant", "-2"]),
    (lambda: precision_at_1("abc", torch.tensor([0])), TypeError, ["ranked"]),
    (lambda: identification_with_distractors(torch.tensor([[1.0, float("nan")], [1.0, 0.0]]), torch.tensor([0, 0]),
                                             torch.rand(3, 2)), ValueError, ["probe_embeddings", "NaN"]),
    (lambda: identification_with_distractors(torch.rand(2, 2), torch.tensor([0, 0]),
                                             torch.tensor([[0.1, 0.2], [0.3, float("inf")]])),
     ValueError, ["distractor_embeddings", "NaN or inf", "rows 0..1"]),
    (lambda: identification_with_distractors(torch.rand(2, 2), torch.tensor([0, 0]), torch.rand(3, 5)),
     ValueError, ["distractor_embeddings", "(N, 2)", "(3, 5)"]),
    (lambda: identification_with_distractors(torch.rand(2, 2), torch.tensor([0.0, 0.0]), torch.rand(3, 2)),
     TypeError, ["probe_labels", "float32"]),
])
def test_metric_bad_input_names_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ----------------------------------------------------------------------------- ROC metrics vs scikit-learn

def _sklearn_tpr_at_fpr(scores, same, target):
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(same.numpy(), scores.numpy(), drop_intermediate=False)
    return float(tpr[fpr <= target].max())


def _sklearn_verification(scores, same, n_folds):
    """k-fold accuracy with the best training threshold (lowest among ties), from roc_curve."""
    from sklearn.metrics import roc_curve
    folds = torch.arange(len(scores)) * n_folds // len(scores)
    accs = []
    for f in range(n_folds):
        train, test = folds != f, folds == f
        fpr, tpr, th = roc_curve(same[train].numpy(), scores[train].numpy(), drop_intermediate=False)
        P, N = int(same[train].sum()), int((~same[train]).sum())
        correct = tpr * P + (1 - fpr) * N
        best = max(i for i in range(len(th)) if correct[i] >= correct.max() - 1e-9)   # lowest threshold
        t = th[best] if math.isfinite(th[best]) else float(scores[train].max()) + 1
        accs.append(((scores[test] >= t) == same[test]).double().mean().item())
    return sum(accs) / len(accs)


@pytest.mark.parametrize("seed,n,levels", [(0, 37, 5), (1, 500, 1000), (2, 1001, 40), (3, 64, 2)])
def test_roc_metrics_match_sklearn(seed, n, levels):
    pytest.importorskip("sklearn")
    gen = torch.Generator().manual_seed(seed)
    same = torch.rand(n, generator=gen) < 0.4
    same[:2] = torch.tensor([True, False])
    # few distinct levels -> many ties, the case a threshold sweep gets wrong most easily
    scores = (torch.randint(0, levels, (n,), generator=gen).double() + 3 * same.double() * torch.rand(n, generator=gen))
    for target in (0.0, 0.01, 0.1, 0.37, 1.0):
        assert tpr_at_fpr(scores, same, fprs=(target,))[target] == pytest.approx(
            _sklearn_tpr_at_fpr(scores, same, target), abs=1e-12)
    assert verification_accuracy(scores, same, n_folds=5)["accuracy"] == pytest.approx(
        _sklearn_verification(scores, same, 5), abs=1e-12)


_LIMITED = r"""
import resource, sys, torch
from fastface.eval import {name}
def vm_bytes():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize"))
{setup}
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + {mb} * 2**20, resource.RLIM_INFINITY))
print({call})
"""


def _run_limited(name, setup, call, mb, cwd):
    """Run call in a fresh interpreter whose address space may grow by at most mb MiB (in cwd, away
    from the source tree, so that it imports the installed package)."""
    import subprocess
    import sys
    code = _LIMITED.format(name=name, setup=setup, call=call, mb=mb)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_roc_metrics_memory_is_linear(tmp_path):
    # 40,000 pairs: the O(N^2) sweep needs 40,000^2 bools (1.6 GB); the sort-based one a few MB
    setup = ("g = torch.Generator().manual_seed(0); n = 40000\n"
             "same = torch.rand(n, generator=g) < 0.5\n"
             "scores = torch.rand(n, generator=g, dtype=torch.float64) + same.double()")
    for name, call in (("verification_accuracy", "verification_accuracy(scores, same, 10)['accuracy']"),
                       ("tpr_at_fpr", "tpr_at_fpr(scores, same)")):
        out = _run_limited(name, setup, call, mb=400, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]


def test_distractor_identification_memory_is_bounded(tmp_path):
    # 100 probes x 1,000,000 distractors: the full similarity matrix is 800 MB of float64
    setup = ("g = torch.Generator().manual_seed(0)\n"
             "probes = torch.randn(100, 4, generator=g); labels = torch.arange(100) // 2\n"
             "dis = torch.randn(1000000, 4, generator=g)")
    out = _run_limited("identification_with_distractors", setup,
                       "identification_with_distractors(probes, labels, dis)", mb=400, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


def test_distractor_identification_blocks_equal_one_shot(monkeypatch):
    import fastface.eval.metrics as metrics
    from fastface.eval.cmfr import cross_identification
    gen = torch.Generator().manual_seed(5)
    probes, gallery = torch.randn(23, 6, generator=gen), torch.randn(23, 6, generator=gen)
    labels = torch.randint(0, 7, (23,), generator=gen)
    dis = torch.randn(301, 6, generator=gen)
    whole = identification_with_distractors(probes, labels, dis), cross_identification(probes, gallery, labels, dis)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 50)          # blocks of 2 probe rows, 2 distractors
    assert identification_with_distractors(probes, labels, dis) == whole[0]
    assert cross_identification(probes, gallery, labels, dis) == whole[1]
    # the one-shot definitions
    p, d, q, g = (torch.nn.functional.normalize(t.double(), dim=1) for t in (probes, dis, probes, gallery))
    pairs = (labels[:, None] == labels[None]) & ~torch.eye(23, dtype=torch.bool)
    best = (p @ d.T).amax(1)
    assert whole[0] == pytest.approx((p @ p.T > best[:, None])[pairs].double().mean().item())
    assert whole[1]["top1"] == pytest.approx((q @ g.T > best[:, None])[pairs].double().mean().item())
