"""The cursor's arithmetic (no files): steps per epoch, rank coverage, the shuffle order."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from loader import Cursor, LoaderError, epoch_permutation
from loader.cursor import order_digest
from prep.epoch import steps_per_epoch


@pytest.mark.parametrize(
    "N, B, T, W, E",
    [
        (338_026, 4, 32, 1, 2_640),  # tiny Shakespeare, --val-fraction 0 (README)
        (338_026, 4, 32, 2, 1_320),
        (338_026, 16, 1024, 1, 20),
        (129, 4, 32, 1, 1),  # exactly B*T + 1 tokens: one step
        (1_001, 1, 1, 1, 1_000),
        (1_000, 1, 1, 3, 333),
        (4 * 32 * 8 * 5 + 1, 4, 32, 8, 5),
        (4 * 32 * 8 * 5, 4, 32, 8, 4),  # one token short of the fifth step
        (10_000_000_000, 64, 1024, 8, (10_000_000_000 - 1) // (64 * 1024 * 8)),
    ],
)
def test_steps_per_epoch(N, B, T, W, E):
    assert steps_per_epoch(N, B, T, W) == E
    assert Cursor(N, B, T, W).steps_per_epoch == E


@pytest.mark.parametrize(
    "N, B, T, W", [(128, 4, 32, 1), (0, 1, 1, 1), (1, 1, 1, 1), (256, 4, 32, 2)]
)
def test_no_full_step_is_an_error_naming_n_b_t_w(N, B, T, W):
    assert steps_per_epoch(N, B, T, W) == 0
    with pytest.raises(LoaderError, match=rf"N={N} tokens .* B={B} x T={T} x W={W} ranks"):
        Cursor(N, B, T, W)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("N, B, T, W", [(1_000, 2, 7, 3), (338_026, 4, 32, 4), (97, 1, 4, 5)])
def test_ranks_read_disjoint_windows_whose_union_is_contiguous(N, B, T, W, shuffle):
    cursor = Cursor(N, B, T, W, shuffle=shuffle, seed=5)
    E = cursor.steps_per_epoch
    for epoch in range(2):
        starts = sorted(
            cursor.window_start(epoch * E + k, rank) for k in range(E) for rank in range(W)
        )
        # each window's inputs are [s, s + B*T): disjoint and gapless from 0 to E*W*B*T
        assert starts == list(range(0, E * W * B * T, B * T))
        assert starts[-1] + B * T + 1 <= N  # the last target exists


def test_sequential_order_without_shuffle():
    cursor = Cursor(1_000, 2, 5, 2)
    E = cursor.steps_per_epoch
    assert [cursor.window_start(k, 1) for k in range(E + 2)] == [
        ((k % E) * 2 + 1) * 10 for k in range(E + 2)
    ]


def test_shuffle_is_a_permutation_per_epoch_the_same_on_every_rank_new_each_epoch():
    N, B, T, W = 20_000, 2, 8, 4
    cursors = [Cursor(N, B, T, W, shuffle=True, seed=123) for _ in range(W)]
    E = cursors[0].steps_per_epoch
    orders = []
    for epoch in range(3):
        slots = [[c.slot(epoch * E + k) for k in range(E)] for c in cursors]
        assert all(s == slots[0] for s in slots)  # every rank draws the same order
        assert sorted(slots[0]) == list(range(E))  # each slot exactly once
        for rank, c in enumerate(cursors):  # and reads its own part of each slot
            assert c.window_start(epoch * E, rank) == (slots[0][0] * W + rank) * B * T
        orders.append(slots[0])
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert orders[0] != list(range(E))


def test_shuffled_cursors_in_one_process_draw_each_epochs_order_once(monkeypatch):
    """Three shuffled loaders in one process (a mixture of datasets, read in turn) keep their own
    epochs' orders: none evicts another's. A cache of two shared by the process redrew a
    permutation of all E slots for every window (44 ms a window at E = 2M, seconds at 10B tokens)."""
    draws = []
    real = np.random.SeedSequence
    monkeypatch.setattr(np.random, "SeedSequence", lambda entropy: draws.append(tuple(entropy)) or real(entropy))
    seeds = (9_001, 9_002, 9_003)
    cursors = [Cursor(10_001, 2, 5, shuffle=True, seed=seed) for seed in seeds]  # E = 1,000
    for step in range(2_000):  # two epochs, the three cursors in turn
        for cursor in cursors:
            cursor.window_start(step, 0)
    assert sorted(draws) == [(seed, epoch) for seed in seeds for epoch in (0, 1)]


def test_an_epoch_boundary_holds_two_orders_at_most(monkeypatch):
    """10B tokens at B=4, T=32 are 78M slots, 312 MB an order. Drawing the next epoch's order
    held the two cached ones, np.arange and permutation's copy of it: 1.41 GB peak RSS from
    epoch 2 on (0.82 GB now). Now the order before the current epoch's is dropped first and
    the arange shuffled in place: the epoch being read and the one being drawn, nothing more."""
    import tracemalloc

    cursor = Cursor(1_000_000 * 4 + 1, 2, 2, shuffle=True, seed=3)  # E = 1,000,000: 4 MB an order
    E, size = cursor.steps_per_epoch, 4 * cursor.steps_per_epoch
    tracemalloc.start()
    try:
        cursor.window_start(0, 0)
        cursor.window_start(E, 0)
        tracemalloc.reset_peak()
        cursor.window_start(2 * E, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.25 * size, f"{peak:,} bytes at the boundary for orders of {size:,}"
    assert [cursor.slot(k) for k in (E, 2 * E)] == [epoch_permutation(3, 1, E)[0], epoch_permutation(3, 2, E)[0]]


def test_the_permutation_depends_on_seed_and_epoch_only():
    a = epoch_permutation(1, 0, 500)
    np.testing.assert_array_equal(a, epoch_permutation(1, 0, 500))
    expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence([1, 0]))).permutation(500)
    np.testing.assert_array_equal(a, expected)
    assert not np.array_equal(a, epoch_permutation(2, 0, 500))
    assert not a.flags.writeable  # shared by the cache: nobody may modify it


def test_the_permutation_is_int32_in_the_order_checkpoints_were_written_with():
    # int32 halves the memory at scale; the order must stay rng.permutation(steps)'s (int64),
    # or a shuffled run resumed from an older checkpoint would read other windows
    for seed, epoch, steps in [(0, 0, 1), (3, 7, 2), (5, 1, 100_003)]:
        perm = epoch_permutation(seed, epoch, steps)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
        assert perm.dtype == np.int32
        np.testing.assert_array_equal(perm, rng.permutation(steps))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"B": 0}, "B must be an integer >= 1"),
        ({"T": 0}, "T must be an integer >= 1"),
        ({"world": 0}, "world must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"B": False}, "B must be an integer"),
        ({"shuffle": "False"}, "shuffle must be True or False, got 'False'"),  # it shuffled
        ({"shuffle": 1}, "shuffle must be True or False, got 1"),
        ({"shuffle": None}, "shuffle must be True or False, got None"),  # (None is pin_memory's auto only)
    ],
)
def test_cursor_validates_its_fields(kwargs, message):
    args = {"num_tokens": 1_000, "B": 2, "T": 4, **kwargs}
    with pytest.raises(LoaderError, match=message):
        Cursor(**args)


def test_a_cursor_takes_a_numpy_bool_for_shuffle_as_a_plain_bool():
    """np.True_ was refused as though it were 1; taken, it is made a plain bool (the loader's
    state holds it, which json.dumps and torch.load(weights_only=True) take)."""
    given, plain = (Cursor(num_tokens=1_000, B=2, T=4, shuffle=shuffle, seed=3)
                    for shuffle in (np.True_, True))
    assert type(given.shuffle) is bool and given == plain
    assert [given.slot(k) for k in range(50)] == [plain.slot(k) for k in range(50)]


@pytest.mark.parametrize("step, rank", [(0, 2), (0, -1), (-1, 0)])
def test_a_window_of_no_rank_or_no_step_is_refused(step, rank):
    """Rank 2 of 2 got the next slot's rank 0 window (at the last slot one past the stream:
    96 + 9 tokens of N=100); step -1 the last slot's, or numpy's bare IndexError when shuffling."""
    for shuffle in (False, True):
        cursor = Cursor(num_tokens=100, B=2, T=4, world=2, shuffle=shuffle)
        with pytest.raises(LoaderError, match=rf"no window of step {step} on rank {rank}: .* world - 1 = 1"):
            cursor.window_start(step, rank)
    assert cursor.window_start(11, 1) + 8 < 100


def test_the_epoch_of_a_step_counts_whole_epochs():
    cursor = Cursor(1_000, 2, 5, 2)  # E = 999 // 20 = 49
    E = cursor.steps_per_epoch
    assert E == 49
    assert [cursor.epoch(k) for k in (0, E - 1, E, 2 * E - 1, 2 * E, 7 * E + 3)] == [0, 0, 1, 1, 2, 7]


def test_an_epoch_boundary_read_from_both_sides_draws_each_order_once(monkeypatch):
    """At a boundary the prefetch thread reads the next epoch while the consumer's side
    (train.py's window_start for its log) still asks for the current one: both orders stay
    cached, neither is redrawn per call (a permutation of all E slots each time)."""
    draws = []
    real = np.random.SeedSequence
    monkeypatch.setattr(np.random, "SeedSequence", lambda entropy: draws.append(tuple(entropy)) or real(entropy))
    cursor = Cursor(10_001, 2, 5, shuffle=True, seed=7)  # E = 1,000
    E = cursor.steps_per_epoch
    for k in range(4):  # thread in epoch 1, consumer still in epoch 0, in turn
        cursor.window_start(E + k, 0)
        cursor.window_start(E - 4 + k, 0)
    assert sorted(draws) == [(7, 0), (7, 1)]
    assert [cursor.slot(E - 1), cursor.slot(E)] == [epoch_permutation(7, 0, E)[E - 1], epoch_permutation(7, 1, E)[0]]


def test_the_order_digest_is_the_sha256_of_the_slots_as_little_endian_integers_cut_to_16_hex_digits():
    """Checkpoints carry it and ranks on other machines compare it (train.py): one definition,
    whatever the machine's byte order or the array's, written out here with struct. A digest
    computed otherwise (another length, another byte order, a slot left out) refused every
    shuffled resume from an older checkpoint as damaged."""
    slots = [3, 0, 2, 1, 70_000]
    for dtype, code in (("<i4", "i"), (">i4", "i"), ("<i8", "q"), (">i8", "q")):
        expected = hashlib.sha256(struct.pack(f"<{len(slots)}{code}", *slots)).hexdigest()[:16]
        assert order_digest(np.array(slots, dtype=dtype)) == expected, dtype
    cursor = Cursor(10_001, 2, 5, shuffle=True, seed=7)  # E = 1,000: int32 slots
    for epoch in (0, 3):
        perm = epoch_permutation(7, epoch, cursor.steps_per_epoch)
        expected = hashlib.sha256(struct.pack(f"<{perm.size}i", *perm.tolist())).hexdigest()[:16]
        assert cursor.order_digest(epoch) == expected


def test_a_cursor_reading_in_order_has_no_order_digest():
    """None, as state_dict()'s "order" is: train.py's ranks compare it as 0 (trainer/facts.py),
    and no permutation of all E slots is drawn for it."""
    assert Cursor(10_001, 2, 5, seed=7).order_digest(0) is None
