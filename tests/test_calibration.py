"""Layer 2: temperature scaling recovers a temperature it is hidden from. Labels are drawn from a known model and
the fit is handed that model's scores made over-confident by a factor 3: it must find 3 again, not 1 (nothing
fitted), a bound or any other value that merely lowers the NLL."""

import pytest
import torch

from hrn.calibration import TEMPERATURE_BOUNDS, SplitOutputs, fit_temperatures, minimum_held_out
from tests.fixtures import random_tree

HIDDEN = 3.0
M = 6000  # samples: enough for the maximum-likelihood temperature to lie within a few per cent of the truth


def leaf_labelled(seed: int):
    """A tree, tree scores (M, N), leaf logits (M, n_L) and leaf targets drawn from them at temperature 1.

    Every node's score carries an offset of +6, so the states that end above the leaves (one node fewer) get
    at most e^-6 of the probability: the tree distribution is then, to a good approximation, the softmax over
    leaves of their path sums, and leaf labels are a sample of it. The leaf logits' targets are drawn from
    their own softmax, which the leaf temperature models exactly."""
    h = random_tree(depth=3, seed=seed, max_children=3, roots=2)
    g = torch.Generator().manual_seed(seed)
    leaf0, n_leaves = h.offsets[-2], h.level_sizes[-1]
    scores = 6.0 + 1.5 * torch.randn(M, h.num_nodes, generator=g)
    path_sums = scores @ h.ancestors[leaf0:].float().T  # (M, n_L): a leaf's score and its ancestors'
    tree_targets = leaf0 + torch.multinomial(path_sums.softmax(1), 1, generator=g).squeeze(1)
    leaf_logits = 1.5 * torch.randn(M, n_leaves, generator=g)
    leaf_targets = torch.multinomial(leaf_logits.softmax(1), 1, generator=g).squeeze(1)
    return h, scores, tree_targets, leaf_logits, leaf0 + leaf_targets


@pytest.mark.parametrize("seed", [0, 1])
def test_the_leaf_temperature_is_the_hidden_one(seed):
    h, _, _, leaf_logits, targets = leaf_labelled(seed)
    outputs = SplitOutputs(torch.zeros(0), HIDDEN * leaf_logits, targets)
    record = fit_temperatures(outputs, h, tree_scores="leaf")
    assert record["tree_temperature"] is None
    assert record["leaf_temperature"] == pytest.approx(HIDDEN, rel=0.08)
    assert record["nll"]["leaf"]["after"] < record["nll"]["leaf"]["before"] - 0.1


@pytest.mark.parametrize("per_level", [False, True])
def test_the_tree_temperatures_are_the_hidden_one(per_level):
    h, scores, targets, leaf_logits, _ = leaf_labelled(seed=2)
    outputs = SplitOutputs(HIDDEN * scores, leaf_logits, targets)
    record = fit_temperatures(outputs, h, tree_scores="sigmoid", per_level=per_level)
    assert len(record["tree_temperature"]) == h.num_levels
    assert record["tree_temperature"] == pytest.approx([HIDDEN] * h.num_levels, rel=0.1)
    assert record["nll"]["tree"]["after"] < record["nll"]["tree"]["before"] - 0.1


def test_calibrated_scores_are_left_alone():
    h, scores, targets, leaf_logits, _ = leaf_labelled(seed=3)
    record = fit_temperatures(SplitOutputs(scores, leaf_logits, targets), h, tree_scores="sigmoid")
    assert record["tree_temperature"] == pytest.approx([1.0] * h.num_levels, rel=0.1)


def no_level_worse(record: dict) -> bool:
    nll = record["nll"]["tree"]
    return all(a <= b + 1e-12 for a, b in zip(nll["levels_after"], nll["levels_before"], strict=True))


def test_a_level_the_fit_cannot_help_keeps_temperature_1_and_none_gets_worse():
    h, scores, targets, leaf_logits, _ = leaf_labelled(seed=3)  # calibrated already
    record = fit_temperatures(SplitOutputs(scores, leaf_logits, targets), h, tree_scores="sigmoid")
    assert no_level_worse(record) and 1.0 in record["tree_temperature"]


def test_labels_the_outputs_say_nothing_about_stop_the_temperature_at_a_bound(caplog):
    """Leaf logits unrelated to the labels: the NLL falls as T grows without end; the fit stops at the upper
    bound, says so, and stores it as it is (no rounding to 0 or to infinity)."""
    h, scores, targets, leaf_logits, _ = leaf_labelled(seed=4)
    record = fit_temperatures(SplitOutputs(HIDDEN * scores, leaf_logits, targets), h, tree_scores="sigmoid")
    assert record["leaf_temperature"] == pytest.approx(TEMPERATURE_BOUNDS[1])
    assert record["at_bound"] == ["leaf"] and "the leaf softmax is on a bound" in caplog.text
    assert no_level_worse(record)


@pytest.mark.parametrize("count", [1, 3])
def test_a_split_of_one_or_three_images_stays_inside_the_bounds(count):
    h, scores, targets, leaf_logits, _ = leaf_labelled(seed=5)
    record = fit_temperatures(
        SplitOutputs(50 * scores[:count], leaf_logits[:count], targets[:count]), h, tree_scores="sigmoid"
    )  # what hrn.calibrate refuses (fewer than minimum_held_out images), and still no crash or degenerate value
    low, high = TEMPERATURE_BOUNDS
    assert all(low <= t <= high for t in [*record["tree_temperature"], record["leaf_temperature"]])
    assert count < minimum_held_out(h)
