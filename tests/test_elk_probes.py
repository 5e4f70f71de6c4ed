"""ELK probes and AUROC on synthetic Gaussian data with a known truth direction."""

from __future__ import annotations

import pytest
import torch

from statetap.interp.elk import (
    CcsProbe,
    CrcProbe,
    LdaProbe,
    LogisticProbe,
    MeanDiffProbe,
    RandomProbe,
    auroc,
    fit_eraser,
)

SUPERVISED = [LogisticProbe, MeanDiffProbe, LdaProbe]


def fresh_generator() -> torch.Generator:
    """A generator seeded from torch's global RNG, which conftest seeds afresh for every test
    (reproduce a failure with ``STATETAP_TEST_SEED``)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))


def labelled(g: torch.Generator, n: int, d: int, margin: float = 6.0):
    """``(features [n, d], labels [n] bool, direction [d])``: Gaussian classes whose means
    differ by ``margin`` along a random unit ``direction``; anisotropic noise."""
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    labels = torch.rand(n, generator=g) < 0.4
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d)
    noise = torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing
    offset = torch.randn(d, generator=g, dtype=torch.float64) * 5
    return noise + offset + margin * labels[:, None] * direction, labels, direction


def contrast_pairs(g: torch.Generator, n: int, d: int, margin: float = 3.0):
    """``(positive, negative [n, d], labels [n])``: each statement carries ``+-margin`` along
    a truth direction (opposite on its negation), a large content vector shared by both
    sides, a constant negation offset on each side, and small independent noise."""
    truth = torch.randn(d, generator=g, dtype=torch.float64)
    truth /= truth.norm()
    labels = torch.rand(n, generator=g) < 0.5
    sign = labels.to(torch.float64) * 2 - 1
    content = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    noise = 0.3 * torch.randn(2, n, d, generator=g, dtype=torch.float64)
    offset_pos = 4 * torch.randn(d, generator=g, dtype=torch.float64)
    offset_neg = 4 * torch.randn(d, generator=g, dtype=torch.float64)
    positive = content + offset_pos + margin * sign[:, None] * truth + noise[0]
    negative = content + offset_neg - margin * sign[:, None] * truth + noise[1]
    return positive, negative, labels


def split(n_train: int, *tensors):
    return [t[:n_train] for t in tensors], [t[n_train:] for t in tensors]


# ---------------------------------------------------------------------------------------------
# AUROC


def pairwise_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    true, false = scores[labels], scores[~labels]
    diff = true[:, None] - false[None, :]
    wins = (diff > 0).double() + 0.5 * (diff == 0).double()
    return wins.mean().item()


@pytest.mark.parametrize("n", [2, 7, 301])
def test_auroc_equals_pairwise_count_with_ties(n):
    g = fresh_generator()
    scores = torch.randint(0, 5, (n,), generator=g).float()  # many ties
    labels = torch.arange(n) % 2 == 0
    labels = labels[torch.randperm(n, generator=g)]
    assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels), abs=1e-12)
    continuous = torch.randn(n, generator=g, dtype=torch.float64)
    int_labels = labels.long()
    assert auroc(continuous, int_labels) == pytest.approx(
        pairwise_auroc(continuous, labels), abs=1e-12
    )


def test_auroc_closed_forms():
    assert auroc(torch.tensor([0.1, 0.4, 0.4, 0.9]), torch.tensor([0, 0, 1, 1])) == 0.875
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 1.0])) == 1.0
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([False, True, True])) == 0.0
    assert auroc(torch.ones(5), torch.tensor([0, 1, 0, 1, 1])) == 0.5


def test_auroc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = fresh_generator()
    scores = torch.randint(0, 9, (513,), generator=g).double() + 0.1
    labels = torch.rand(513, generator=g) < 0.3
    assert auroc(scores, labels) == pytest.approx(
        metrics.roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12
    )


@pytest.mark.parametrize(
    "scores, labels, error, match",
    [
        (torch.rand(5), torch.tensor([0, 1, 0, 1]), ValueError, "labels must have shape"),
        (torch.rand(4), torch.ones(4, dtype=torch.bool), ValueError, "both classes"),
        (torch.rand(4, 1), torch.tensor([0, 1, 0, 1]), ValueError, "scores must be 1-D"),
        (torch.rand(4), torch.tensor([[0, 1, 0, 1]]), ValueError, "labels must have shape"),
        (torch.rand(4), torch.tensor([0, 2, 0, 1]), ValueError, "labels must be bool"),
        ([0.1, 0.2], torch.tensor([0, 1]), TypeError, "scores must be a torch.Tensor"),
        (torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]), ValueError, "finite"),
    ],
)
def test_auroc_bad_input(scores, labels, error, match):
    with pytest.raises(error, match=match):
        auroc(scores, labels)


# ---------------------------------------------------------------------------------------------
# Probes separate separable data and are at chance on shuffled labels


@pytest.mark.parametrize("probe_cls", SUPERVISED)
def test_supervised_probes_separate(probe_cls):
    g = fresh_generator()
    x, y, _ = labelled(g, 403, 13)
    (x_train, y_train), (x_test, y_test) = split(201, x, y)
    probe = probe_cls().fit(x_train, y_train)
    assert auroc(probe.score(x_test), y_test) > 0.95


@pytest.mark.parametrize("probe_cls", [*SUPERVISED, RandomProbe])
def test_shuffled_labels_give_chance(probe_cls):
    g = fresh_generator()
    x, y, _ = labelled(g, 2201, 11)
    shuffled = y[torch.randperm(y.numel(), generator=g)]
    (x_train, y_train), (x_test, y_test) = split(201, x, shuffled)
    probe = probe_cls().fit(x_train, y_train)
    assert abs(auroc(probe.score(x_test), y_test) - 0.5) < 0.1


@pytest.mark.parametrize("probe_cls", [*SUPERVISED, CcsProbe, CrcProbe])
def test_probes_on_contrast_pairs(probe_cls):
    g = fresh_generator()
    pos, neg, y = contrast_pairs(g, 333, 9)
    (pos_train, neg_train, y_train), (pos_test, neg_test, y_test) = split(151, pos, neg, y)
    probe = probe_cls().fit(pos_train, y_train, negation=neg_train)
    assert probe.paired
    assert auroc(probe.score(pos_test, negation=neg_test), y_test) > 0.95


@pytest.mark.parametrize("probe_cls", [CcsProbe, CrcProbe])
def test_unsupervised_probes_without_labels_find_the_truth_up_to_sign(probe_cls):
    g = fresh_generator()
    pos, neg, y = contrast_pairs(g, 257, 6)
    probe = probe_cls().fit(pos, negation=neg)
    assert abs(auroc(probe.score(pos, negation=neg), y) - 0.5) > 0.45


def test_pair_variant_is_the_difference():
    g = fresh_generator()
    pos, neg, y = contrast_pairs(g, 99, 5)
    for probe_cls in [*SUPERVISED, RandomProbe]:
        paired = probe_cls().fit(pos, y, negation=neg).score(pos, negation=neg)
        plain = probe_cls().fit(pos - neg, y).score(pos - neg)
        torch.testing.assert_close(paired, plain)


# ---------------------------------------------------------------------------------------------
# Closed forms


def test_logistic_first_order_optimality():
    g = fresh_generator()
    x, y, _ = labelled(g, 157, 7, margin=1.0)
    l2 = 0.05
    probe = LogisticProbe(l2=l2).fit(x, y)
    z = (x - probe.shift) / probe.scale
    w = probe.weight * probe.scale  # weights on the standardised features
    residual = torch.sigmoid(probe.score(x)) - y.double()
    assert (z.T @ residual / len(y) + l2 * w).abs().max() < 1e-7
    assert abs(residual.mean()) < 1e-7  # unregularised bias
    torch.testing.assert_close(probe.score(x), z @ w + (probe.bias + probe.shift @ probe.weight))


def test_mean_diff_direction_and_platt_calibration():
    g = fresh_generator()
    x, y, _ = labelled(g, 211, 5, margin=1.5)
    probe = MeanDiffProbe().fit(x, y)
    hand = x[y].sum(0) / y.sum() - x[~y].sum(0) / (~y).sum()
    torch.testing.assert_close(probe.direction, hand)
    # Platt's fit: the mean predicted probability equals the mean smoothed target
    n_true, n_false = int(y.sum()), int((~y).sum())
    targets = torch.where(y, (n_true + 1) / (n_true + 2), 1 / (n_false + 2)).double()
    p = torch.sigmoid(probe.score(x))
    assert abs((p - targets).mean()) < 1e-7
    assert abs(((p - targets) * (x @ hand)).mean()) < 1e-6 * (x @ hand).abs().mean()
    assert probe.slope > 0


def test_lda_direction_is_a_hand_solve():
    g = fresh_generator()
    x, y, _ = labelled(g, 123, 6, margin=1.0)
    ridge = 0.01
    probe = LdaProbe(ridge=ridge).fit(x, y)
    mu1, mu0 = x[y].mean(0), x[~y].mean(0)
    within = torch.zeros(6, 6, dtype=torch.float64)
    for row, label in zip(x, y):
        centred = row - (mu1 if label else mu0)
        within += torch.outer(centred, centred)
    within /= len(y) - 2
    matrix = within + ridge * within.trace() / 6 * torch.eye(6, dtype=torch.float64)
    hand = torch.linalg.inv(matrix) @ (mu1 - mu0)
    torch.testing.assert_close(probe.direction, hand)
    torch.testing.assert_close(probe.score(x), (x - (mu1 + mu0) / 2) @ hand)


def test_random_probe_is_a_seeded_unit_direction():
    g = fresh_generator()
    x, y, _ = labelled(g, 31, 17)
    a, b, c = RandomProbe(seed=3).fit(x, y), RandomProbe(seed=3).fit(x), RandomProbe(seed=4).fit(x)
    torch.testing.assert_close(a.direction, b.direction)
    assert not torch.allclose(a.direction, c.direction)
    assert a.direction.norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(a.score(x), x.double() @ a.direction)


# ---------------------------------------------------------------------------------------------
# CCS, CRC and LEACE invariants


def test_ccs_loss_and_invariants():
    g = fresh_generator()
    pos, neg, y = contrast_pairs(g, 187, 7)
    probe = CcsProbe(restarts=3, seed=5).fit(pos, y, negation=neg)
    # unoriented (no labels): better than the uninformative p = 1/2 (loss 1/4), and a
    # stationary point of the loss
    unoriented = CcsProbe(restarts=3, seed=5).fit(pos, negation=neg)
    assert unoriented.loss < 0.2
    w = unoriented.weight.clone().requires_grad_(True)
    b = unoriented.bias.clone().requires_grad_(True)
    z_pos = (pos - unoriented.mean_pos) / unoriented.norm
    z_neg = (neg - unoriented.mean_neg) / unoriented.norm
    loss = CcsProbe.objective(torch.sigmoid(z_pos @ w + b), torch.sigmoid(z_neg @ w + b))
    assert loss.item() == pytest.approx(unoriented.loss)
    grad_w, grad_b = torch.autograd.grad(loss, (w, b))
    assert grad_w.norm() < 1e-5 and grad_b.abs() < 1e-5
    # orienting with labels flips the sign or nothing
    flipped = torch.allclose(probe.weight, -unoriented.weight)
    assert flipped or torch.allclose(probe.weight, unoriented.weight)
    # the direction is the truth direction's (the content shared by a pair cancels)
    p_pos, p_neg = probe.probabilities(pos, neg)
    torch.testing.assert_close(probe.score(pos, neg), (p_pos + 1 - p_neg) / 2)
    assert auroc(probe.score(pos, neg), y) > 0.95
    # seeded; more restarts keep the lowest loss (the first start is the same)
    again = CcsProbe(restarts=3, seed=5).fit(pos, y, negation=neg)
    torch.testing.assert_close(again.weight, probe.weight)
    assert probe.loss <= CcsProbe(restarts=1, seed=5).fit(pos, negation=neg).loss + 1e-12
    # a constant shift of either side is removed by the per-side centring
    shifted = CcsProbe(restarts=3, seed=5).fit(pos + 7.0, y, negation=neg - 2.0)
    torch.testing.assert_close(shifted.weight, probe.weight, rtol=1e-5, atol=1e-5)
    # the objective by hand
    a, b = torch.tensor([0.9, 0.2]), torch.tensor([0.3, 0.6])
    hand = ((0.9 - 0.7) ** 2 + 0.3**2 + (0.2 - 0.4) ** 2 + 0.2**2) / 2
    assert CcsProbe.objective(a, b).item() == pytest.approx(hand)


def test_crc_erases_the_pair_side_and_finds_the_top_component():
    g = fresh_generator()
    pos, neg, y = contrast_pairs(g, 211, 8)
    probe = CrcProbe().fit(pos, y, negation=neg)
    erased_pos, erased_neg = probe.eraser(pos), probe.eraser(neg)
    torch.testing.assert_close(erased_pos.mean(0), erased_neg.mean(0), rtol=0, atol=1e-8)
    differences = erased_pos - erased_neg
    centred = differences - differences.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    assert abs(probe.direction @ eigenvectors[:, -1]).item() == pytest.approx(1.0)
    assert auroc(probe.score(pos, neg), y) > 0.95


def test_crc_erases_a_nuisance_label():
    g = fresh_generator()
    pos, neg, y = contrast_pairs(g, 240, 8)
    template = torch.randint(0, 3, (240,), generator=g)
    shift = 5 * torch.randn(3, 8, generator=g, dtype=torch.float64)
    pos, neg = pos + shift[template], neg + shift[template]
    probe = CrcProbe().fit(pos, y, negation=neg, nuisance=template)
    # the guarantee holds over the 2N statements the eraser was fitted on
    erased = probe.eraser(torch.cat([pos, neg]))
    both = torch.cat([template, template])
    means = torch.stack([erased[both == k].mean(0) for k in range(3)])
    torch.testing.assert_close(means, means[:1].expand(3, -1), rtol=0, atol=1e-8)
    torch.testing.assert_close(erased[:240].mean(0), erased[240:].mean(0), rtol=0, atol=1e-8)
    assert auroc(probe.score(pos, neg), y) > 0.95


def test_leace_erased_features_carry_no_linear_information():
    g = fresh_generator()
    x, y, _ = labelled(g, 4001, 9)
    (x_train, y_train), (x_test, y_test) = split(2001, x, y)
    assert auroc(LogisticProbe().fit(x_train, y_train).score(x_test), y_test) > 0.95
    eraser = fit_eraser(x_train, y_train)
    erased = eraser(x_train)
    torch.testing.assert_close(erased[y_train].mean(0), erased[~y_train].mean(0), rtol=0, atol=1e-8)
    probe = LogisticProbe().fit(erased, y_train)
    assert abs(auroc(probe.score(eraser(x_test)), y_test) - 0.5) < 0.1


# ---------------------------------------------------------------------------------------------
# Bad input


ALL = [LogisticProbe, MeanDiffProbe, LdaProbe, CcsProbe, CrcProbe, RandomProbe]


@pytest.mark.parametrize("probe_cls", ALL)
def test_bad_input(probe_cls):
    x, neg = torch.randn(10, 4), torch.randn(10, 4)
    y = torch.arange(10) % 2
    with pytest.raises(ValueError, match=r"labels must have shape \[10\]"):
        probe_cls().fit(x, y[:9], negation=neg)
    with pytest.raises(ValueError, match="labels must contain both classes"):
        probe_cls().fit(x, torch.ones(10), negation=neg)
    with pytest.raises(ValueError, match="features must be 2-D"):
        probe_cls().fit(x[0], y, negation=neg)
    with pytest.raises(ValueError, match="negation must have the shape of features"):
        probe_cls().fit(x, y, negation=neg[:, :3])
    with pytest.raises(TypeError, match="features must be a torch.Tensor"):
        probe_cls().fit(x.tolist(), y, negation=neg)
    with pytest.raises(TypeError, match="features must be a real floating tensor"):
        probe_cls().fit(x.long(), y, negation=neg)
    with pytest.raises(RuntimeError, match="call fit"):
        probe_cls().score(x, negation=neg)
    probe = probe_cls().fit(x, y, negation=neg)
    with pytest.raises(ValueError, match="features must have 4 columns"):
        probe.score(x[:, :3], negation=neg[:, :3])
    with pytest.raises(ValueError, match="negation is required"):
        probe.score(x)


@pytest.mark.parametrize("probe_cls", SUPERVISED)
def test_supervised_needs_labels(probe_cls):
    with pytest.raises(ValueError, match="labels"):
        probe_cls().fit(torch.randn(6, 3))
    probe = probe_cls().fit(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match="negation must be None"):
        probe.score(torch.randn(2, 3), negation=torch.randn(2, 3))


@pytest.mark.parametrize("probe_cls", [CcsProbe, CrcProbe])
def test_unsupervised_needs_pairs(probe_cls):
    with pytest.raises(ValueError, match="negation"):
        probe_cls().fit(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))


def test_bad_configuration():
    with pytest.raises(ValueError, match="l2"):
        LogisticProbe(l2=-1.0)
    with pytest.raises(ValueError, match="ridge"):
        LdaProbe(ridge=-0.1)
    with pytest.raises(ValueError, match="restarts"):
        CcsProbe(restarts=0)
    with pytest.raises(ValueError, match="nuisance"):
        CrcProbe().fit(torch.randn(6, 3), negation=torch.randn(6, 3), nuisance=torch.rand(6))
