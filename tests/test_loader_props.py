"""Property-based: for any (N, B, T, W, rank, k, shard sizes), step k's window is the slice of
the concatenated tokens that loader/cursor.py's formula names."""

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
