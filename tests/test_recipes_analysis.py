"""Recipe analysis by hand: Pareto curves, matched-L0 interpolation and seed-aware verdicts."""

import math

import pytest

from saekit.recipes.claims import FAILS, HOLDS, INCONCLUSIVE, Claim, Point
from saekit.recipes.compare import at_matched_l0, l0_ratio_at_matched_metric, per_key
from saekit.recipes.pareto import frontier, l0_at, value_at
from saekit.recipes.results import Results, Row, Series


def test_frontier_keeps_only_points_nothing_beats_at_lower_l0():
    points = [(16, 0.20), (4, 0.40), (8, 0.45), (32, 0.10), (64, 0.12)]
    assert frontier(points, higher_is_better=False) == [(4, 0.40), (16, 0.20), (32, 0.10)]
    recovered = [(2, 0.5), (4, 0.7), (8, 0.65), (16, 0.9)]
    assert frontier(recovered, higher_is_better=True) == [(2, 0.5), (4, 0.7), (16, 0.9)]


def test_interpolation_is_linear_in_log_l0_and_refuses_to_extrapolate():
    curve = [(4, 0.40), (16, 0.20), (32, 0.10)]
    # 8 is half-way between 4 and 16 in log L0: the mean of 0.40 and 0.20
    assert value_at(curve, 8) == pytest.approx(0.30)
    # 16·√2 is half-way between 16 and 32
    assert value_at(curve, 16 * math.sqrt(2)) == pytest.approx(0.15)
    assert value_at(curve, 4) == pytest.approx(0.40) and value_at(curve, 32) == pytest.approx(0.10)
    assert value_at(curve, 3.9) is None and value_at(curve, 33) is None
    # the inverse: where the curve reaches a metric
    assert l0_at(curve, 0.30, higher_is_better=False) == pytest.approx(8)
    assert l0_at(curve, 0.50, higher_is_better=False) is None, "already better at its first L0"
    assert l0_at(curve, 0.05, higher_is_better=False) is None, "never reaches it"


def rows(variant, seed, points, metric="nmse"):
    return [
        Row(
            {
                "name": f"{variant}-{i}",
                "variant": variant,
                "mode": "inference",
                "seed": seed,
                "options": {"k": int(l0)},
                "offline": {"l0": l0, metric: value} if metric != "loss_added" else {"l0": l0},
                "online": {metric: value} if metric == "loss_added" else {},
            }
        )
        for i, (l0, value) in enumerate(points)
    ]


def test_matched_l0_comparison_against_hand_computed_curves():
    # seed 0: A = [(4, .40), (16, .20)], B = [(4, .50), (16, .30)]; seed 1 is A, B shifted by .02
    results = Results(
        rows("a", 0, [(4, 0.40), (16, 0.20)])
        + rows("b", 0, [(4, 0.50), (16, 0.30)])
        + rows("a", 1, [(4, 0.42), (16, 0.22)])
        + rows("b", 1, [(4, 0.52), (16, 0.32)])
    )
    a, b = Series("A", "a", "inference", {}), Series("B", "b", "inference", {})
    (point,) = at_matched_l0(results, a, b, "nmse", l0s=[8])
    assert point.claimed == pytest.approx([0.30, 0.32])
    assert point.other == pytest.approx([0.40, 0.42])
    assert point.margin == pytest.approx(0.10), "A is lower by 0.10: the claimed direction"
    assert point.spread == pytest.approx(0.02)
    assert point.verdict == HOLDS
    default_grid = at_matched_l0(results, a, b, "nmse")
    assert [p.where for p in default_grid] == ["L0 4", "L0 8", "L0 16"], "ends and middle"
    # the L0 B needs for A's NMSE at L0 8 (0.30): B reaches 0.30 at 16 -> ratio 16 / 8 = 2
    (ratio,) = l0_ratio_at_matched_metric(results, b, a, "nmse", [8])
    assert ratio.claimed == pytest.approx([2.0, 16 / 8]) and ratio.verdict == FAILS


def test_verdicts_respect_the_spread_of_repeated_seeds():
    within = Point("x", [0.30, 0.36], [0.33, 0.37], higher_is_better=False)
    assert within.margin == pytest.approx(0.02) and within.spread == pytest.approx(0.06)
    assert within.verdict == INCONCLUSIVE
    worse = Point("x", [0.50, 0.51], [0.30, 0.31], higher_is_better=False)
    assert worse.verdict == FAILS
    single = Point("x", [0.30], [0.33], higher_is_better=False, borrowed_spread=0.05)
    assert single.verdict == INCONCLUSIVE, "one seed borrows the repeated seeds' spread"
    better = Point("x", [0.10, 0.11], [0.30, 0.31], higher_is_better=False)
    claim = Claim("r", "c", "s", "a vs b", "m", [better, within])
    assert claim.verdict == INCONCLUSIVE, "holds only if every point holds"
    assert Claim("r", "c", "s", "a vs b", "m", [better, worse]).verdict == FAILS
    assert Claim("r", "c", "s", "a vs b", "m", [better]).verdict == HOLDS


def test_per_key_pairs_rows_of_equal_sweep_value_and_borrows_spread():
    results = Results(
        rows("a", 0, [(4, 0.1), (8, 0.2)], "loss_added")
        + rows("b", 0, [(4, 0.3), (8, 0.25)], "loss_added")
        + rows("a", 1, [(4, 0.12)], "loss_added")
        + rows("b", 1, [(4, 0.33)], "loss_added")
    )
    a, b = Series("A", "a", "inference", {}), Series("B", "b", "inference", {})
    four, eight = per_key(results, a, b, "loss_added", lambda r: r.options["k"], str)
    assert four.claimed == [0.1, 0.12] and four.spread == pytest.approx(0.03)
    assert eight.claimed == [0.2] and eight.spread == pytest.approx(0.03), "borrowed"
    assert eight.margin == pytest.approx(0.05) and eight.verdict == HOLDS


def test_a_parity_claim_allows_the_claimed_arm_its_slack_and_no_more():
    within = Point("k 8", [0.104, 0.106], [0.100, 0.101], higher_is_better=False, slack=0.0101)
    # margin −0.0045, spread 0.002: worse than the other arm, but by less than the slack
    assert within.verdict == HOLDS
    beyond = Point("k 8", [0.130, 0.131], [0.100, 0.101], higher_is_better=False, slack=0.0101)
    assert beyond.verdict == FAILS, "0.03 worse is beyond a 0.01 slack plus the seeds' 0.001"
    strict = Point("k 8", [0.104, 0.106], [0.100, 0.101], higher_is_better=False)
    assert strict.verdict == FAILS, "without the slack the same numbers do not hold"


def matryoshka_row(seed, prefixes, latents=64):
    return Row(
        {
            "name": "matryoshka",
            "variant": "matryoshka",
            "mode": "inference",
            "seed": seed,
            "options": {"k": 4, "latents": latents},
            "offline": {"l0": 4, "nmse": prefixes[str(latents)], "prefix_nmse": prefixes},
            "online": {},
        }
    )


def alone_row(seed, latents, nmse):
    return Row(
        {
            "name": f"batchtopk-{latents}",
            "variant": "batchtopk",
            "mode": "inference",
            "seed": seed,
            "options": {"k": 4, "latents": latents},
            "offline": {"l0": 4, "nmse": nmse},
            "online": {},
        }
    )


def test_prefixes_are_judged_against_the_sae_of_their_width_trained_alone():
    from saekit.recipes.judge import PrefixVsAlone, Within

    results = Results(
        [
            matryoshka_row(0, {"16": 0.50, "32": 0.30, "64": 0.20}),
            matryoshka_row(1, {"16": 0.52, "32": 0.30, "64": 0.21}),
        ]
        + [alone_row(s, 16, 0.40 + s / 100) for s in (0, 1)]
        + [alone_row(s, 32, 0.29) for s in (0, 1)]
        + [alone_row(s, 64, 0.20) for s in (0, 1)]
    )
    nested = Series("M", "matryoshka", "inference", {})
    alone = Series("B", "batchtopk", "inference", {})
    first, second = Within(PrefixVsAlone(), 0.10).points(results, nested, alone, "nmse")
    assert first.where == "16 latents" and first.claimed == [0.50, 0.52]
    assert first.other == pytest.approx([0.40, 0.41]) and first.slack == pytest.approx(0.0405)
    assert first.verdict == FAILS, "0.105 worse, beyond 10 % of 0.405 and the seeds' 0.02"
    assert second.where == "32 latents" and second.claimed == [0.30, 0.30]
    assert second.verdict == HOLDS, "0.01 worse, within 10 % of 0.29"
    # the full dictionary is not a prefix: a claim of its own compares it


def test_rows_without_shape_keys_match_the_default_shape():
    sae = Row({"variant": "topk", "mode": "inference", "options": {"k": 8}})
    transcoder = Row(
        {"variant": "topk", "mode": "inference", "options": {"k": 8, "target": "b.out"}}
    )
    assert sae.matches("topk", None, {"target": None, "skip": False})
    assert not transcoder.matches("topk", None, {"target": None})
    assert transcoder.matches("topk", None, {"target": "b.out", "skip": False})
