"""Shadow comparison: recent real states in a bounded buffer, and how far a candidate's actions
are from the live model's on them."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from rollout_helpers import Linear, NanAwayFromZero

from ckptserve import ValidationError
from ckptserve.rollout.shadow import DEAD_BAND, StateBuffer, compare

W = [0.5, -0.25, 1.0, 0.75]


def states_grid(n: int, obs_dim: int = 4) -> list[list[float]]:
    """n distinct states with values in [-1, 1]."""
    return [[math.sin(i * 0.37 + j) for j in range(obs_dim)] for i in range(n)]


def test_the_ring_buffer_never_exceeds_its_size_and_keeps_the_newest():
    """1,000 requests into a buffer of 8: 8 states kept, the last 8, oldest first."""
    buffer = StateBuffer(8)
    for i in range(1000):
        buffer.record([[float(i)] * 4])
        assert len(buffer) == min(i + 1, 8)
        assert len(buffer.states()) == min(i + 1, 8)
    assert [s[0] for s in buffer.states()] == [float(i) for i in range(992, 1000)]
    assert buffer.recorded == 1000


def test_concurrent_recording_never_exceeds_the_size():
    """Four threads recording at once may lose a state to a race, never grow the buffer."""
    buffer = StateBuffer(16)

    def hammer(k: int) -> None:
        for i in range(5000):
            buffer.record([[float(k), float(i)]])

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(buffer.states()) == 16
    assert buffer.recorded <= 20_000


def test_a_batch_records_one_state_per_request_taken_in_turn():
    """A batch of 3 adds one state per request: rows 0, 1, 2, 0 ... of successive requests."""
    buffer = StateBuffer(10)
    batch = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]
    for _ in range(4):
        buffer.record(batch)
    assert buffer.states() == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]


def test_tensor_rows_are_kept_as_lists_not_as_views_of_the_batch():
    """A tensor batch (OIP's binary input) gives a plain list: the batch is not kept alive."""
    buffer = StateBuffer(4)
    buffer.record(torch.arange(8, dtype=torch.float32).reshape(2, 4))
    assert buffer.states() == [[0.0, 1.0, 2.0, 3.0]]
    assert type(buffer.states()[0]) is list


def test_size_zero_is_off():
    """--shadow-states 0: nothing is kept."""
    buffer = StateBuffer(0)
    buffer.record([[1.0, 2.0]])
    assert buffer.states() == [] and len(buffer) == 0
    with pytest.raises(ValueError):
        StateBuffer(-1)


def test_states_of_another_size_are_left_out_for_a_model():
    """Only the states a model of that observation size can take are handed to it."""
    buffer = StateBuffer(4)
    buffer.record([[1.0, 2.0]])
    buffer.record([[1.0, 2.0, 3.0]])
    assert buffer.states(obs_dim=3) == [[1.0, 2.0, 3.0]]


def test_the_same_policy_does_not_diverge():
    """A candidate identical to the live model: no difference, no flips, all finite."""
    d = compare(Linear(W), Linear(W), states_grid(64))
    assert (d.states, d.mean_abs, d.max_abs, d.sign_flips, d.non_finite) == (64, 0.0, 0.0, 0.0, 0.0)


def test_a_sign_flipping_candidate_flips_every_state_outside_the_dead_band():
    """`-policy`: every state whose actions are outside the dead band flips; the mean and max
    absolute differences are twice the live actions'."""
    states = states_grid(200)
    live = Linear(W)
    with torch.inference_mode():
        actions = live(torch.tensor(states)).squeeze(1)
    outside = int((actions.abs() > DEAD_BAND).sum())
    d = compare(Linear(W, scale=-1.0), live, states)
    assert d.flipped_states == outside and 0 < outside < 200, d
    assert d.sign_flips == pytest.approx(outside / 200)
    assert d.mean_abs == pytest.approx(float(2 * actions.abs().mean()), rel=1e-6)
    assert d.max_abs == pytest.approx(float(2 * actions.abs().max()), rel=1e-6)


def test_a_sign_change_within_the_dead_band_is_no_flip():
    """Actions of ±0.01 around 0 change sign without flipping; a wider band ignores more."""
    states = [[0.01, 0.0, 0.0, 0.0], [-0.01, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]
    live, flipped = Linear([1.0, 0, 0, 0]), Linear([1.0, 0, 0, 0], scale=-1.0)
    assert compare(flipped, live, states).flipped_states == 1
    assert compare(flipped, live, states, dead_band=0.0).flipped_states == 3
    assert compare(flipped, live, states, dead_band=0.99).flipped_states == 0


def test_a_candidate_nan_only_away_from_zero_shows_as_non_finite():
    """NaN where the first value is above 0.5: the probe's zero state would pass; the shadow
    comparison counts those states and leaves them out of the differences."""
    states = [[0.9, 0.1, 0.2, 0.3]] * 3 + [[0.1, 0.1, 0.2, 0.3]] * 5
    d = compare(NanAwayFromZero(W), Linear(W), states)
    assert (d.non_finite_states, d.non_finite) == (3, 3 / 8)
    assert d.mean_abs == 0.0 and d.max_abs == 0.0
    with torch.inference_mode():
        assert bool(torch.isfinite(NanAwayFromZero(W)(torch.zeros(1, 4))).all())


def test_states_where_the_live_model_is_not_finite_are_left_out():
    """The live model's own NaNs are not the candidate's divergence."""
    states = [[0.9, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]]
    d = compare(Linear(W), NanAwayFromZero(W), states)
    assert (d.non_finite_states, d.mean_abs, d.sign_flips) == (0, 0.0, 0.0)
    all_nan = compare(Linear(W), NanAwayFromZero(W), states[:1])
    assert (all_nan.mean_abs, all_nan.max_abs) == (None, None)


def test_no_buffered_states_means_nothing_to_compare():
    """An empty buffer gives zeros and says so."""
    d = compare(Linear(W), Linear(W), [])
    assert (d.states, d.mean_abs, d.sign_flips, d.non_finite) == (0, None, 0.0, 0.0)
    assert d.summary() == "no buffered states to compare on"


def test_a_candidate_that_fails_or_answers_another_shape_is_refused():
    """A candidate raising on real states, or with another action size, cannot be compared."""

    class Broken(torch.nn.Module):
        def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
            raise RuntimeError("boom")

    class Wide(torch.nn.Module):
        def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
            return state[:, :2]

    with pytest.raises(
        ValidationError, match="the candidate fails on 4 buffered states: RuntimeError: boom"
    ):
        compare(Broken(), Linear(W), states_grid(4))
    with pytest.raises(ValidationError, match=r"shape \[4, 2\].*live model's \[4, 1\]"):
        compare(Wide(), Linear(W), states_grid(4))


def test_the_summary_reads_as_one_line():
    """The figures as the load log and status page show them."""
    d = compare(Linear(W, scale=-1.0), Linear(W), states_grid(10))
    line = d.summary()
    assert line.startswith("over 10 buffered states: mean |Δaction| ")
    assert f"sign flips {d.sign_flips:.1%}" in line and "non-finite 0.0%" in line
    assert d.to_dict()["states"] == 10
