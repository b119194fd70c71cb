from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.gate import DEFAULT_LONG, DEFAULT_SHORT, AlertGate


def reference(
    batches: list[tuple[list[float], list[str]]], prior: tuple[float, float], short: int, long: int
) -> list[float]:
    """The gate's definition, one event at a time."""
    a_s, a_l = 2 / (short + 1), 2 / (long + 1)
    mean0, sd0 = prior
    state: dict[str, list[float]] = {}
    out = []
    for scores, keys in batches:
        for score, k in zip(scores, keys, strict=True):
            s = math.copysign(math.sqrt(abs(score)), score)  # the gate averages roots of scores
            sh, m, sq = state.get(k, [mean0, mean0, sd0 * sd0 + mean0 * mean0])
            sh = (1 - a_s) * sh + a_s * s
            sd = math.sqrt(max(sq - m * m, 0.0))
            floor = max(1e-6 * sd0, 1e-12 * abs(mean0), 1e-30)
            out.append((sh - m) / max(sd, floor))
            m = (1 - a_l) * m + a_l * s
            sq = (1 - a_l) * sq + a_l * s * s
            state[k] = [sh, m, sq]
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.floats(0, 50, allow_nan=False), st.sampled_from("abcde")),
            max_size=60,
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 5),
    st.integers(6, 40),
)
def test_matches_the_event_by_event_definition(batches, short, long) -> None:
    split = [([s for s, _ in b], [k for _, k in b]) for b in batches]
    gate = AlertGate(2.0, prior=(1.0, 0.5), short=short, long=long)
    got = np.concatenate([gate.zscores(np.array(s), k) for s, k in split])
    want = reference(split, (1.0, 0.5), short, long)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_keys_of_very_different_scales_do_not_disturb_each_other() -> None:
    """Keys share one filter pass; a key scoring 1e12 must not cost its neighbour any precision."""
    rng = np.random.default_rng(2)
    big, small = rng.gamma(2.0, 1e12, 300), rng.gamma(2.0, 1e-3, 300)
    scores = np.empty(600)
    scores[0::2], scores[1::2] = big, small
    keys = ["big", "small"] * 300
    got = AlertGate(2.0, prior=(2e-3, 1.4e-3)).zscores(scores, keys)
    want = reference([(scores.tolist(), keys)], (2e-3, 1.4e-3), DEFAULT_SHORT, DEFAULT_LONG)
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_batching_does_not_change_the_result() -> None:
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, 1.0, 3_000)
    keys = rng.choice([f"k{i}" for i in range(37)], 3_000).tolist()
    whole = AlertGate(2.0, prior=(2.0, 1.4)).zscores(scores, keys)
    g = AlertGate(2.0, prior=(2.0, 1.4))
    parts = [g.zscores(scores[i : i + 211], keys[i : i + 211]) for i in range(0, 3_000, 211)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-9, atol=1e-12)


def test_a_lone_spike_stays_shut_a_sustained_rise_opens_it() -> None:
    rng = np.random.default_rng(1)
    normal = rng.normal(1.0, 0.1, 2_000).clip(0)
    gate = AlertGate(2.0, prior=(1.0, 0.1))
    gate.zscores(normal, ["s"] * len(normal))
    spike = gate.zscores(np.array([1.0, 1.6, 1.0]), ["s"] * 3)  # six sd, once
    assert (spike < 2.0).all()
    rise = gate.zscores(np.full(10, 1.6), ["s"] * 10)
    assert rise[-1] >= 2.0
    assert (np.diff(rise) > 0).all()  # the short mean climbs towards the new level


def test_keys_are_independent_and_bounded() -> None:
    gate = AlertGate(2.0, prior=(1.0, 0.1), short=3, long=30, max_keys=3)
    gate.zscores(np.full(300, 5.0), ["noisy"] * 300)  # a key whose scores have been high all along
    z = gate.zscores(np.array([5.0, 5.0]), ["noisy", "quiet"])
    assert z[0] < 2.0 <= z[1]  # the same score is usual for one key, a rise for the other
    gate.zscores(np.ones(3), ["x", "y", "z"])
    assert len(gate) == 3
    assert "noisy" not in gate and "x" in gate  # the least recently seen went first


def test_a_full_gate_forgets_in_steps_so_it_does_not_sort_every_batch() -> None:
    """Full, it sorted all of its keys in every batch that brought a new one: the gate stage went
    from 0.3 to 2.5 ms a batch at 100,000 keys. It now forgets 1 % of its room more than it must,
    so that sort runs once per that many new keys; the least recently seen still go first."""
    gate = AlertGate(2.0, prior=(1.0, 0.1), short=3, long=30, max_keys=1_000)
    gate.zscores(np.ones(1_000), [f"k{i}" for i in range(1_000)])
    assert len(gate) == 1_000
    gate.zscores(np.ones(1), ["new"])
    assert len(gate) == 990 and "new" in gate and "k10" not in gate and "k11" in gate
    gate.zscores(np.ones(10), [f"n{i}" for i in range(10)])  # room for these without a sort
    assert len(gate) == 1_000 and "k11" in gate


def test_inputs_are_checked_and_extreme_scores_stay_finite() -> None:
    with pytest.raises(ValueError):
        AlertGate(0.0, prior=(1.0, 0.1))
    with pytest.raises(ValueError):
        AlertGate(2.0, prior=(1.0, 0.1), short=10, long=10)
    with pytest.raises(ValueError):
        AlertGate(2.0, prior=(float("nan"), 0.1))
    gate = AlertGate(2.0, prior=(0.0, 0.0))
    with pytest.raises(ValueError):
        gate.zscores(np.ones(2), ["a"])
    z = gate.zscores(np.array([np.inf, np.nan, 1e300, 0.0]), ["a"] * 4)
    assert np.isfinite(z).all()
    assert gate.zscores(np.empty(0), []).shape == (0,)
    assert AlertGate.from_scores(2.0, np.empty(0))._prior.tolist() == [0.0, 0.0, 1.0]


def test_one_huge_error_does_not_blind_the_gate_to_the_next_rise() -> None:
    """The gate averages roots of the scores: a lone squared error 400 times the usual would otherwise
    swell the long variance enough to keep a sustained rise that follows shut."""
    rng = np.random.default_rng(0)

    def normal(n: int) -> np.ndarray:
        return rng.normal(0.0, 1.0, n) ** 2  # the squared errors of a healthy model

    gate = AlertGate.from_scores(2.0, normal(500))
    gate.zscores(normal(1_000), ["s"] * 1_000)
    gate.zscores(np.array([400.0]), ["s"])  # one error of 20 (the usual is about 1)
    gate.zscores(normal(50), ["s"] * 50)
    rise = gate.zscores(normal(30) * 25, ["s"] * 30)  # then errors five times their usual size
    assert (rise >= 2.0).sum() >= 10  # on the raw scores: not once
