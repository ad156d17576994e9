"""Property-based: for any (N, B, T, W, rank, k, shard sizes), step k's window is the slice of
the concatenated tokens that loader/cursor.py's formula names; and all W ranks' loaders, resumed
at any step, read each of an epoch's tokens exactly once."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import TokenLoader
from prep.shards import shard_name, write_shard


@st.composite
def cases(draw):
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 40))
    W = draw(st.integers(1, 4))
    E = draw(st.integers(1, 6))
    N = E * B * T * W + 1 + draw(st.integers(0, B * T * W - 1))  # exactly E steps fit
    cuts = sorted(draw(st.lists(st.integers(1, N - 1), max_size=4, unique=True)))
    sizes = np.diff([0, *cuts, N]).tolist()
    rank = draw(st.integers(0, W - 1))
    k = draw(st.integers(0, 3 * E))
    shuffle = draw(st.booleans())
    return B, T, W, E, N, sizes, rank, k, shuffle


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), seed=st.integers(0, 2**32))
def test_window_k_is_the_reference_slice(case, seed):
    B, T, W, E, N, sizes, rank, k, shuffle = case
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 50257, n, dtype=np.uint16) for n in sizes]
    reference = np.concatenate(arrays)
    with tempfile.TemporaryDirectory() as tmp:
        for i, tokens in enumerate(arrays):
            write_shard(Path(tmp) / shard_name("p", "train", i), tokens)
        with TokenLoader(tmp, B=B, T=T, rank=rank, world=W, shuffle=shuffle, prefetch=0) as loader:
            assert loader.num_tokens == N and loader.steps_per_epoch == E
            state = loader.state_dict()
            loader.load_state_dict({**state, "step": k, "epoch": k // E})  # jump to step k
            for step in (k, k + 1):
                epoch, j = divmod(step, E)
                if shuffle:
                    order = np.random.Generator(
                        np.random.PCG64(np.random.SeedSequence([0, epoch]))
                    ).permutation(E)
                    j = int(order[j])
                s = (j * W + rank) * B * T
                assert s + B * T + 1 <= N
                np.testing.assert_array_equal(
                    loader.next_window().numpy(), reference[s : s + B * T + 1]
                )
            x, y = loader.next_batch("cpu")
            assert x.shape == y.shape == (B, T)


@st.composite
def resumed_runs(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 8))
    W = draw(st.integers(1, 4))
    E = draw(st.integers(1, 4))
    N = E * B * T * W + 1 + draw(st.integers(0, B * T * W - 1))
    cuts = set(draw(st.lists(st.integers(1, N - 1), max_size=6)))
    ones = draw(st.integers(0, min(3, N - 1)))  # shards of 1 token at the end: the last shorter than a window
    sizes = np.diff(sorted({0, N, *cuts, *range(N - ones, N)})).tolist()
    resume = draw(st.integers(0, 2 * E - 1))  # 0: before the first batch
    depths = draw(st.tuples(st.sampled_from([0, 1, 2, E + 3]), st.sampled_from([0, 1, 2, E + 3])))
    return B, T, W, E, N, sizes, resume, depths, draw(st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=resumed_runs(), seed=st.integers(0, 2**32))
def test_every_rank_together_reads_each_token_once_an_epoch_across_a_resume(run, seed):
    """All W ranks' loaders for two epochs, stopped after `resume` steps and resumed from rank
    0's state in fresh loaders of another prefetch depth (made with the other shuffle and seed:
    the state's win): each window is the reference's, and each epoch's inputs are the split's
    first E*W*B*T tokens, each exactly once. Token i of the stream is the id i, so a window
    read twice, skipped or misplaced shows whatever the formula says."""
    B, T, W, E, N, sizes, resume, (before, after), shuffle = run
    reference = np.arange(N, dtype=np.uint16)  # N < 50257: ids are positions
    with tempfile.TemporaryDirectory() as tmp:
        for i, (a, b) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes))):
            write_shard(Path(tmp) / shard_name("p", "train", i), reference[a:b])

        def open_ranks(depth, shuffle, seed):
            return [TokenLoader(tmp, B=B, T=T, rank=r, world=W, shuffle=shuffle, seed=seed, prefetch=depth,
                                pin_memory=False) for r in range(W)]

        inputs = {0: [], 1: []}  # epoch -> every input token id read in it, all ranks
        loaders = open_ranks(before, shuffle, seed)
        try:
            for step in range(2 * E):
                if step == resume:
                    state = loaders[0].state_dict()
                    assert all(loader.state_dict() == state for loader in loaders)
                    for loader in loaders:
                        loader.close()
                    loaders = open_ranks(after, not shuffle, seed + 1)
                    for loader in loaders:
                        loader.load_state_dict(state)
                epoch, slot = divmod(step, E)
                if shuffle:
                    slot = int(np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
                               .permutation(E)[slot])
                for rank, loader in enumerate(loaders):
                    assert (loader.step, loader.epoch) == (step, epoch)
                    s = (slot * W + rank) * B * T
                    x, y = loader.next_batch("cpu")  # (B, T) each
                    np.testing.assert_array_equal(x.numpy().ravel(), reference[s : s + B * T])
                    np.testing.assert_array_equal(y.numpy().ravel(), reference[s + 1 : s + B * T + 1])
                    inputs[epoch].extend(x.numpy().ravel().tolist())
        finally:
            for loader in loaders:
                loader.close()
    for epoch in (0, 1):
        assert sorted(inputs[epoch]) == list(range(E * W * B * T))  # each once; the last few never
