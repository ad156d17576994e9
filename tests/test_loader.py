"""TokenLoader: window contents against a reference built from the tokens the test wrote,
epoch arithmetic, next_batch, properties, argument checks, and resume (state_dict)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from loader import LoaderError, TokenLoader
from loader.errors import check_int
from loader.errors import DatasetMismatch
from loader.loader import MAX_PREFETCH
from loader.state import dataset_difference, dataset_digest
from prep.meta import write_meta
from prep.shards import shard_name, write_shard


def write_dataset(directory, sizes, split="train", name="d", seed=0) -> np.ndarray:
    """Shards of random tokens with the given sizes plus a meta.json, as prep tokenize lays
    them out; returns the concatenated stream (the reference)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 50257, n, dtype=np.uint16) for n in sizes]
    entries = []
    for i, tokens in enumerate(arrays):
        file = shard_name(name, split, i)
        sha256 = write_shard(directory / file, tokens)
        entries.append({"file": file, "tokens": int(tokens.size), "sha256": sha256})
    splits = {"train": {"tokens": 0, "shards": []}, "val": {"tokens": 0, "shards": []}}
    splits[split] = {"tokens": int(sum(sizes)), "shards": entries}
    write_meta(directory, {"format_version": 1, "name": name, "splits": splits})
    return np.concatenate(arrays)


@pytest.fixture
def data(tmp_path):
    """Three train shards (1000, 517, 2000 tokens): N = 3517."""
    return tmp_path, write_dataset(tmp_path, [1000, 517, 2000])


def start(k: int, E: int, B: int, T: int, W: int = 1, r: int = 0) -> int:
    """loader/cursor.py's formula, written out again here (not imported): s = ((k mod E)*W + r)*B*T."""
    return ((k % E) * W + r) * B * T


def windows(loader: TokenLoader, count: int) -> list[np.ndarray]:
    return [loader.next_window().numpy().copy() for _ in range(count)]


def test_windows_match_the_stream_across_shard_boundaries_and_the_epoch_end(data):
    path, ref = data
    B, T = 2, 50  # 100 tokens a step: step 9 reads [900, 1001), across shards 0 and 1
    with TokenLoader(path, B=B, T=T, prefetch=0) as loader:
        E = loader.steps_per_epoch
        assert E == (3517 - 1) // 100 == 35
        got = windows(loader, E + 2)
    spanning = [k for k in range(E) if start(k, E, B, T) < 1000 < start(k, E, B, T) + B * T + 1]
    spanning += [k for k in range(E) if start(k, E, B, T) < 1517 < start(k, E, B, T) + B * T + 1]
    assert len(spanning) == 2
    for k in range(E + 2):
        s = start(k, E, B, T)
        np.testing.assert_array_equal(got[k], ref[s : s + B * T + 1])
    last_end = start(E - 1, E, B, T) + B * T + 1
    assert last_end <= len(ref) < last_end + B * T  # the last slot is used; no room for another
    np.testing.assert_array_equal(got[E], got[0])  # wrapped around
    np.testing.assert_array_equal(got[E + 1], got[1])


def test_tiny_shakespeare_sized_split_has_2640_steps_and_a_last_window_that_fits(tmp_path):
    ref = write_dataset(tmp_path, [338_026])  # N of tiny Shakespeare with --val-fraction 0
    with TokenLoader(tmp_path, B=4, T=32, prefetch=0) as loader:
        assert loader.steps_per_epoch == 2_640
        state = loader.state_dict()
        loader.load_state_dict({**state, "step": 2_639})
        np.testing.assert_array_equal(loader.next_window().numpy(), ref[337_792:337_921])
        np.testing.assert_array_equal(loader.next_window().numpy(), ref[:129])  # epoch 1


def test_a_window_may_span_three_shards(tmp_path):
    ref = write_dataset(tmp_path, [300, 5, 7, 300])
    with TokenLoader(tmp_path, B=2, T=100, prefetch=0) as loader:  # windows of 201 tokens
        got = windows(loader, 6)
    for k, window in enumerate(got):
        s = start(k, 3, 2, 100)
        np.testing.assert_array_equal(window, ref[s : s + 201])


def test_epoch_and_step_counters_advance_at_the_wrap(data):
    path, _ = data
    with TokenLoader(path, B=2, T=50, prefetch=0) as loader:
        E = loader.steps_per_epoch
        windows(loader, E - 1)
        assert (loader.step, loader.epoch) == (E - 1, 0)
        loader.next_window()
        assert (loader.step, loader.epoch) == (E, 1)
        windows(loader, E)
        assert loader.epoch == 2


@pytest.mark.parametrize("prefetch", [0, 2])
def test_next_batch_on_cpu_is_int64_b_by_t_with_y_shifted_by_one(data, prefetch):
    path, ref = data
    B, T = 3, 16
    with TokenLoader(path, B=B, T=T, prefetch=prefetch) as loader:
        batches = [loader.next_batch("cpu") for _ in range(3)]
    for k, (x, y) in enumerate(batches):  # still valid after later calls: fresh tensors
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
        s = start(k, loader.steps_per_epoch, B, T)
        expected = torch.from_numpy(ref[s : s + B * T + 1].astype(np.int64))
        assert torch.equal(x.flatten(), expected[:-1]) and torch.equal(y.flatten(), expected[1:])
        assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_batch_that_fails_to_reach_its_device_is_not_consumed(data, prefetch):
    """next_batch to a device this machine lacks (CUDA or MPS without it: a LoaderError saying
    so; cuda:1 on one GPU: torch's error) or to no device at all (a LoaderError, not torch's list of
    device types); the window it could not deliver is the next one given, and state_dict has not
    moved past it, so a caller who catches the error and goes on skips no window."""
    path, ref = data
    B, T = 2, 50
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or CUDA on a CPU build
    with TokenLoader(path, B=B, T=T, prefetch=prefetch) as loader:
        loader.next_batch("cpu")
        if torch.cuda.is_available():
            with pytest.raises(RuntimeError):
                loader.next_batch(absent)
        else:
            with pytest.raises(LoaderError, match="^next_batch: device 'cuda:0', but CUDA is not available here$"):
                loader.next_batch(absent)
        if not torch.backends.mps.is_available():  # torch's RuntimeError, as cuda:1's
            with pytest.raises(LoaderError, match="^next_batch: device 'mps', but MPS .* is not available here$"):
                loader.next_batch("mps")
        for wrong in ("gpu", "CPU", torch.float32, None):
            with pytest.raises(LoaderError, match=r"^next_batch: .* is not a device \(such as 'cpu', 'cuda'"):
                loader.next_batch(wrong)
        assert loader.step == loader.state_dict()["step"] == 1
        for k in (1, 2):
            x, y = loader.next_batch("cpu")
            s = start(k, loader.steps_per_epoch, B, T)
            np.testing.assert_array_equal(x.flatten().numpy(), ref[s : s + B * T])
            np.testing.assert_array_equal(y.flatten().numpy(), ref[s + 1 : s + B * T + 1])


def test_next_window_is_a_uint16_cpu_tensor_of_b_t_plus_one(data):
    path, _ = data
    with TokenLoader(path, B=4, T=8) as loader:
        window = loader.next_window()
        assert window.dtype == torch.uint16 and window.shape == (33,)
        assert window.device.type == "cpu"
        assert window.is_pinned() == torch.cuda.is_available() == loader.pin_memory


def test_properties(data):
    path, ref = data
    with TokenLoader(path, B=4, T=8, rank=1, world=3, shuffle=True, seed=7, prefetch=3) as loader:
        assert loader.num_tokens == len(ref) == 3517
        assert loader.steps_per_epoch == (3517 - 1) // (4 * 8 * 3)
        assert (loader.B, loader.T, loader.rank, loader.world) == (4, 8, 1, 3)
        assert (loader.shuffle, loader.seed, loader.prefetch) == (True, 7, 3)
        assert (loader.step, loader.epoch) == (0, 0)
        assert [p.name for p in loader.shards] == [shard_name("d", "train", i) for i in range(3)]
        assert "N=3517" in repr(loader)


def test_a_split_too_small_for_one_step_names_n_b_t_w(tmp_path):
    write_dataset(tmp_path, [100])
    with pytest.raises(LoaderError, match=r"N=100 .*B=4 .*T=32 .*W=1"):
        TokenLoader(tmp_path, B=4, T=32)
    with TokenLoader(tmp_path, B=3, T=11, world=3) as loader:  # 3*11*3 + 1 = 100: just fits
        assert loader.steps_per_epoch == 1
    with pytest.raises(LoaderError, match=r"N=100 .*B=3 .*T=11 .*W=4"):
        TokenLoader(tmp_path, B=3, T=11, world=4)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc/self/fd")
def test_a_loader_refused_after_mapping_its_shards_keeps_none_open_while_its_error_lives(tmp_path):
    """The shards are mapped before the split is found too small: the error's traceback holds
    the half-built loader, and its shards stayed open as long as the error (a notebook keeps
    the last one) unless they are closed before it is raised."""
    write_dataset(tmp_path, [50, 50])
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(LoaderError, match=r"N=100 .*B=4 .*T=32") as refused:
        TokenLoader(tmp_path, B=4, T=32)
    assert refused.value is not None and len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"B": 0}, "B must be an integer >= 1, got 0"),
        ({"T": -3}, "T must be an integer >= 1, got -3"),
        ({"B": 2.5}, "B must be an integer"),
        ({"T": True}, "T must be an integer"),
        ({"world": 0}, "world must be an integer >= 1"),
        ({"rank": -1}, "rank must be an integer >= 0"),
        ({"rank": 2, "world": 2}, r"0 <= rank < world=2, got rank=2"),
        ({"prefetch": -1}, "prefetch must be an integer from 0 to 1024, got -1"),
        # a ring of millions of buffers filled memory with their views before any allocation failed
        ({"prefetch": 1025}, "prefetch must be an integer from 0 to 1024, got 1025"),
        ({"prefetch": 2**62}, "prefetch must be an integer from 0 to 1024, got 4611686018427387904"),
        ({"pin_memory": "no"}, "pin_memory must be True, False or None \\(auto\\), got 'no'"),
        ({"pin_memory": 1}, "pin_memory must be True, False or None \\(auto\\), got 1"),
        ({"seed": -5}, "seed must be an integer >= 0"),
        ({"shuffle": "yes"}, "shuffle must be True or False"),
        # None is pin_memory's "auto", no shuffle's: taken, it read in order without a word
        ({"shuffle": None}, "shuffle must be True or False, got None"),
        ({"split": "test"}, "split must be one of train, val"),
        # 0 flagged every token as outside the vocabulary, "50257" failed the comparison in the thread
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1, got 0"),
        ({"vocab_size": "50257"}, "vocab_size must be an integer >= 1, got '50257'"),
    ],
)
def test_bad_arguments_are_clear_errors(data, kwargs, message):
    path, _ = data
    with pytest.raises(LoaderError, match=message):
        TokenLoader(path, **kwargs)


def test_numpy_bools_are_taken_where_a_bool_is_and_made_plain(data):
    """pin_memory=np.False_ and shuffle=np.True_ (a config's numpy scalars, an array's element)
    were refused as though they were "no" or 1, where numpy integers are taken for the sizes;
    made plain bools, they reach the state as json.dumps and torch.load(weights_only=True) take
    it. Anything else that is not a bool is still refused."""
    path, _ = data
    with (TokenLoader(path, B=2, T=4, pin_memory=np.False_, shuffle=np.True_) as given,
          TokenLoader(path, B=2, T=4, pin_memory=False, shuffle=True) as plain):
        assert type(given.pin_memory) is bool and type(given.shuffle) is bool
        assert (given.pin_memory, given.shuffle) == (False, True)
        assert json.dumps(given.state_dict()) == json.dumps(plain.state_dict())
        for _ in range(3):
            assert torch.equal(given.next_window(), plain.next_window())
    for bad in (np.int64(0), np.array([False]), "False"):
        with pytest.raises(LoaderError, match=r"pin_memory must be True, False or None \(auto\), got "):
            TokenLoader(path, pin_memory=bad)
        with pytest.raises(LoaderError, match=r"shuffle must be True or False, got "):
            TokenLoader(path, shuffle=bad)


def test_the_deepest_prefetch_allowed_is_taken(data):
    """The limit is MAX_PREFETCH itself, as the error says ("from 0 to 1024"), not one below it."""
    path, _ = data
    assert check_int("prefetch", np.int64(MAX_PREFETCH), 0, MAX_PREFETCH) == MAX_PREFETCH
    with (TokenLoader(path, B=1, T=1, prefetch=0) as plain,
          TokenLoader(path, B=1, T=1, prefetch=MAX_PREFETCH) as deep):
        for _ in range(3):
            assert torch.equal(deep.next_window(), plain.next_window())


@pytest.mark.parametrize("path", [None, 3, b"data"])
def test_a_path_that_is_no_path_is_a_clear_error(path):
    with pytest.raises(LoaderError, match=f"path must be a directory, a glob or a shard file .*got {path!r}$"):
        TokenLoader(path)


def test_a_ring_too_big_for_memory_is_a_clear_error(data, monkeypatch):
    """(B*T+1 tokens times prefetch + 1 buffers: a large window can fill memory at any depth)"""
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "empty", no_memory)
    with pytest.raises(LoaderError, match=r"^prefetch=8: a ring of 9 buffers of B\*T\+1 = 129 tokens \(2,322 bytes\) "
                                          r"cannot be allocated; a depth of 2 to 8 hides the copies$"):
        TokenLoader(data[0], prefetch=8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_pin_memory_without_cuda_is_an_error(data):
    with pytest.raises(LoaderError, match="pin_memory=True needs CUDA"):
        TokenLoader(data[0], pin_memory=True)


# -- resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("prefetch_before, prefetch_after", [(0, 0), (2, 2), (0, 3), (2, 0)])
def test_resume_gives_the_windows_of_an_uninterrupted_run(
    data, shuffle, prefetch_before, prefetch_after
):
    path, _ = data
    kw = dict(B=2, T=50, shuffle=shuffle, seed=11)
    with TokenLoader(path, prefetch=0, **kw) as loader:
        E = loader.steps_per_epoch
        uninterrupted = windows(loader, 3 * E)
    for k in (0, 1, E - 1, E, E + 1, 2 * E - 1):  # around the epoch boundaries
        with TokenLoader(path, prefetch=prefetch_before, **kw) as first:
            windows(first, k)
            state = json.loads(json.dumps(first.state_dict()))  # JSON-safe, like a checkpoint
        assert (state["step"], state["epoch"]) == (k, k // E)
        with TokenLoader(path, prefetch=prefetch_after, **kw) as resumed:
            resumed.load_state_dict(state)
            assert (resumed.step, resumed.epoch) == (k, k // E)
            for expected in uninterrupted[k : k + E + 2]:
                np.testing.assert_array_equal(resumed.next_window().numpy(), expected)


def test_numpy_integers_are_taken_and_the_state_and_figures_are_plain_ints(data, tmp_path):
    """B, T, seed, a step given as numpy integers (a sweep's np.arange): the state holds Python
    ints, so json.dumps takes it and torch.load(weights_only=True) reads a checkpoint back."""
    path, _ = data
    with TokenLoader(path, B=np.int64(2), T=np.int32(50), rank=np.int64(1), world=np.int64(2),
                     shuffle=True, seed=np.uint32(7), prefetch=np.int64(1)) as loader:
        windows(loader, loader.steps_per_epoch + 1)
        loader.load_state_dict({**loader.state_dict(), "step": np.int64(loader.step)})
        state = loader.state_dict()
        figures = (loader.B, loader.T, loader.rank, loader.world, loader.seed, loader.step, loader.epoch,
                   loader.steps_per_epoch, loader.window_start(np.int64(3)))
    assert [type(v) for v in figures] == [int] * len(figures)
    assert all(type(v) in (int, bool, str, list) for k, v in state.items() if k != "order"), state
    assert [type(v) for v in state["order"].values()] == [int, str, str], state  # epoch, digest, numpy
    json.dumps(state)
    torch.save({"loader": state}, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["loader"] == state


@pytest.mark.parametrize("fmt", [2, None, "1", True, 1.0])
def test_a_state_of_another_format_is_refused(data, fmt):
    """A state's "format" says how its fields are laid out: another one (a later version's) is
    refused, not read as this one's; True and 1.0 too, which Python takes for equal to 1."""
    path, _ = data
    with TokenLoader(path, B=2, T=50) as loader:
        state = loader.state_dict()
        with pytest.raises(LoaderError, match=rf"^not a TokenLoader state of format 1 \(missing nothing, format "
                                              rf"{re.escape(repr(fmt))}\)$"):
            loader.load_state_dict({**state, "format": fmt})
        loader.load_state_dict(state)  # its own: taken


def test_load_state_dict_adopts_the_saved_shuffle_and_seed(data):
    path, _ = data
    with TokenLoader(path, B=2, T=50, shuffle=True, seed=3, prefetch=0) as saved:
        windows(saved, 4)
        state = saved.state_dict()
        expected = windows(saved, 5)
    with TokenLoader(path, B=2, T=50, shuffle=False, seed=0, prefetch=0) as resumed:
        resumed.load_state_dict(state)
        assert (resumed.shuffle, resumed.seed) == (True, 3)
        for window in expected:
            np.testing.assert_array_equal(resumed.next_window().numpy(), window)


def other_numpy_shuffle(monkeypatch, numpy_version="0.0-other"):
    """What a numpy whose Generator.shuffle draws otherwise gives: epoch_permutation's order,
    rotated by one slot, under another numpy version."""
    import loader.cursor
    drawn = loader.cursor.epoch_permutation
    monkeypatch.setattr(loader.cursor, "epoch_permutation",
                        lambda seed, epoch, steps: np.roll(drawn(seed, epoch, steps), 1))
    monkeypatch.setattr(np, "__version__", numpy_version)


def test_a_shuffled_state_resumed_under_a_numpy_that_shuffles_otherwise_is_refused_inside_an_epoch(
        data, monkeypatch):
    """numpy does not promise Generator.shuffle's stream across versions: read in another order,
    the rest of the epoch would repeat windows read before the resume and skip others. The
    state's digest of its epoch's order refuses that, and names the numpy that drew it."""
    path, _ = data
    with TokenLoader(path, B=2, T=50, shuffle=True, seed=3, prefetch=2) as saved:
        E = saved.steps_per_epoch
        windows(saved, E + 4)  # inside epoch 1
        inside = saved.state_dict()
        windows(saved, E - 4)  # at epoch 2's first step: no window of it read yet
        boundary = saved.state_dict()
        expected = windows(saved, 3)
    assert inside["order"]["numpy"] == np.__version__
    assert inside["order"]["digest"] != boundary["order"]["digest"]  # each epoch its own
    other_numpy_shuffle(monkeypatch)
    with TokenLoader(path, B=2, T=50, shuffle=True, seed=3, prefetch=2) as resumed:
        then = inside["order"]["numpy"]
        message = (f"the shuffled order of epoch 1 drawn here (numpy 0.0-other) is not the one the state was saved "
                   f"in (numpy {then}): resuming at step {E + 4}, inside epoch 1, would read some of its windows "
                   f"twice and others never; resume under numpy {then}")
        with pytest.raises(LoaderError, match=f"^{re.escape(message)}$"):
            resumed.load_state_dict(inside)
        assert resumed.step == 0  # refused: the loader is where it was
        resumed.load_state_dict(boundary)  # any order is exact from an epoch's first step
        assert resumed.step == 2 * E
        got = windows(resumed, 3)
        assert any((a != b).any() for a, b in zip(got, expected))  # (this numpy's order, as it should be)
        assert resumed.state_dict()["order"]["numpy"] == "0.0-other"


def test_a_state_without_an_order_digest_or_unshuffled_resumes_unchecked(data, monkeypatch):
    """States saved before the digest (no "order") resume as they did; a sequential state has
    no order to check (None)."""
    path, _ = data
    with TokenLoader(path, B=2, T=50, shuffle=True, seed=3, prefetch=0) as saved:
        windows(saved, 4)
        old = {k: v for k, v in saved.state_dict().items() if k != "order"}
    with TokenLoader(path, B=2, T=50, prefetch=0) as saved:
        windows(saved, 4)
        sequential = saved.state_dict()
    assert sequential["order"] is None
    other_numpy_shuffle(monkeypatch)
    with TokenLoader(path, B=2, T=50, prefetch=0) as resumed:
        resumed.load_state_dict(old)
        assert (resumed.step, resumed.shuffle) == (4, True)
        resumed.load_state_dict(sequential)
        assert (resumed.step, resumed.shuffle) == (4, False)


def test_a_shuffled_state_whose_digest_the_same_numpy_does_not_draw_is_damaged(data):
    path, _ = data
    with TokenLoader(path, B=2, T=50, shuffle=True, seed=3, prefetch=0) as loader:
        windows(loader, 4)
        state = loader.state_dict()
        state["order"] = {**state["order"], "digest": "0" * 16}
        message = (f"damaged loader state: its order digest '{'0' * 16}' is not that of epoch 0 of seed 3, drawn by "
                   f"the same numpy {np.__version__}")
        with pytest.raises(LoaderError, match=f"^{re.escape(message)}$"):
            loader.load_state_dict(state)
        for order in ({"numpy": np.__version__, "epoch": 0}, "0" * 16, {**state["order"], "digest": 7},
                      {**state["order"], "epoch": -1}, {**state["order"], "epoch": "0"},
                      {**state["order"], "epoch": False}):  # (bool is an int subclass: not an epoch)
            with pytest.raises(LoaderError, match="malformed loader state: order must be a dict with an epoch and a "
                                                  "digest"):
                loader.load_state_dict({**state, "order": order})


def test_reset_goes_back_to_step_zero(data):
    path, _ = data
    with TokenLoader(path, B=2, T=50) as loader:
        first = windows(loader, 3)
        loader.reset()
        assert loader.step == 0
        for window in first:
            np.testing.assert_array_equal(loader.next_window().numpy(), window)


def test_a_state_for_other_data_or_other_b_t_w_is_refused(tmp_path, data):
    path, _ = data
    other = tmp_path / "other"
    other.mkdir()
    write_dataset(other, [1000, 517, 2001])
    with TokenLoader(path, B=2, T=50) as loader:
        state = loader.state_dict()
    with TokenLoader(other, B=2, T=50) as loader, pytest.raises(LoaderError, match="another data"):
        loader.load_state_dict(state)
    renamed = tmp_path / "renamed"  # the same tokens under another dataset name
    renamed.mkdir()
    write_dataset(renamed, [1000, 517, 2000], name="e")
    with TokenLoader(renamed, B=2, T=50) as loader, pytest.raises(
            LoaderError, match=r"first difference: d_train_000000.bin of 1000 tokens there, "
                               r"e_train_000000.bin of 1000 tokens here"):
        loader.load_state_dict(state)
    with TokenLoader(path, B=2, T=50) as loader, pytest.raises(
            LoaderError, match=r"saved with B='2', T=50, W=1; this loader has B=2, T=50, W=1"):
        loader.load_state_dict({**state, "B": "2"})  # a hand-edited state: the difference shows
    for kw, ours in [({"B": 5}, "B=5, T=50, W=1"), ({"T": 20}, "B=2, T=20, W=1"),
                     ({"world": 2}, "B=2, T=50, W=2")]:
        with TokenLoader(path, **{"B": 2, "T": 50, **kw}) as loader:
            message = f"saved with B=2, T=50, W=1; this loader has {ours}"
            with pytest.raises(LoaderError, match=message):
                loader.load_state_dict(state)


def test_a_state_saved_under_another_locale_resumes(tmp_path):
    """A process under LC_ALL=C without UTF-8 mode names the shard 'dé_train_000000.bin' as
    'd\\udcc3\\udca9_train_000000.bin' (its bytes, surrogate-escaped); the dataset reads under
    either locale (meta.json spells names in UTF-8), and so does a checkpoint's loader state."""
    path = tmp_path / "dé"
    path.mkdir()
    write_dataset(path, [1000, 517], name="dé")
    with TokenLoader(path, B=2, T=50) as loader:
        windows(loader, 3)
        state = loader.state_dict()
        expected = windows(loader, 2)
    assert state["shards"][0][0] == "dé_train_000000.bin"
    as_c = {**state, "shards": [[name.encode("utf-8").decode("ascii", "surrogateescape"), *rest]
                                for name, *rest in state["shards"]]}
    assert as_c["shards"][0][0] == "d\udcc3\udca9_train_000000.bin"
    with TokenLoader(path, B=2, T=50) as loader:
        loader.load_state_dict(as_c)
        for got, want in zip(windows(loader, 2), expected):
            np.testing.assert_array_equal(got, want)


def test_a_state_for_a_retokenized_dataset_with_the_same_names_and_counts_is_refused(tmp_path, data):
    path, _ = data
    other = tmp_path / "other"
    other.mkdir()
    write_dataset(other, [1000, 517, 2000], seed=1)  # same files and counts, other tokens
    with TokenLoader(path, B=2, T=50) as loader:
        windows(loader, 3)
        state = loader.state_dict()
    assert [entry[2] for entry in state["shards"]] == [
        e["sha256"] for e in json.loads((path / "meta.json").read_text())["splits"]["train"]["shards"]]
    with TokenLoader(other, B=2, T=50) as loader:  # DatasetMismatch: train.py adds the --data to resume with
        with pytest.raises(DatasetMismatch, match=r"d_train_000000.bin has the same name and token count, "
                                              r"but its sha256 is \w{12}\.\.\. now"):
            loader.load_state_dict(state)


def test_dataset_digest_is_equal_for_the_same_shards_only(tmp_path, data):
    """Ranks on machines of their own compare dataset_digest before they train together: a copy
    of the dataset (another directory, another locale's spelling of the names) gives the same
    number; the same names and counts with other tokens (meta.json's sha256), or other names,
    give another."""
    path, _ = data
    for directory, kw in (("copy", {}), ("retokenized", {"seed": 1}), ("renamed", {"name": "e"})):
        (tmp_path / directory).mkdir()
        write_dataset(tmp_path / directory, [1000, 517, 2000], **kw)
    digests = {}
    for directory in (path, *(tmp_path / d for d in ("copy", "retokenized", "renamed"))):
        with TokenLoader(directory, B=2, T=50) as loader:
            digests[directory.name] = dataset_digest(loader.identity)
    assert all(0 <= d < 2**62 for d in digests.values())
    assert digests["copy"] == digests[path.name] and len(set(digests.values())) == 3, digests
    (tmp_path / "dé").mkdir()
    write_dataset(tmp_path / "dé", [1000, 517, 2000], name="dé")
    with TokenLoader(tmp_path / "dé", B=2, T=50) as loader:
        identity = loader.identity
    as_c = [[name.encode("utf-8").decode("ascii", "surrogateescape"), *rest] for name, *rest in identity]
    assert as_c != identity and dataset_digest(as_c) == dataset_digest(identity)


def test_a_state_resumes_where_the_digest_is_unknown_on_either_side(data):
    """States from before digests were recorded ([name, count] pairs), and shards without a
    meta.json listing them, are checked by names and counts alone."""
    path, ref = data
    with TokenLoader(path, B=2, T=50) as loader:
        windows(loader, 3)
        state = loader.state_dict()
    old = {**state, "shards": [entry[:2] for entry in state["shards"]]}
    with TokenLoader(path, B=2, T=50) as loader:
        loader.load_state_dict(old)
        np.testing.assert_array_equal(loader.next_window().numpy(), ref[300:401])
    (path / "meta.json").unlink()  # the same files, now found by their names
    with TokenLoader(path, B=2, T=50) as loader:
        assert all(entry[2] is None for entry in loader.state_dict()["shards"])
        loader.load_state_dict(state)
        np.testing.assert_array_equal(loader.next_window().numpy(), ref[300:401])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("step"), "missing \\['step'\\]"),
        (lambda s: s.update(format=99), "format 99"),
        (lambda s: s.update(epoch=5), "step 3 is in epoch 0, not 5"),
        (lambda s: s.update(step=-1), "state step must be an integer >= 0"),
        (lambda s: s.update(shards=[1, 2]), "malformed shard list"),
        (lambda s: s.update(shards=[["d_train_000000.bin", 1000, "a", "b"]]), "malformed shard list"),
        (lambda s: s.update(shards=[["d_train_000000.bin", 1000, 7]]), "malformed shard list"),
        (lambda s: s.update(shards=[["d_train_000000.bin", True]]), "malformed shard list"),  # not 1 token
        # bool("False") is True: a non-bool shuffle would silently read another order
        (lambda s: s.update(shuffle="False"),
         "malformed loader state: shuffle must be True or False, got 'False'"),
        (lambda s: s.update(shuffle=1), "malformed loader state: shuffle must be True or False, got 1"),
        (lambda s: s.update(shuffle=None), "malformed loader state: shuffle must be True or False, got None"),
        # a count saved as text is not the number it prints as: the message shows which is which
        (lambda s: s.update(num_tokens="3517"), "N='3517' tokens; this loader reads 3 shard\\(s\\), N=3517 tokens"),
    ],
)
def test_a_malformed_state_is_refused(data, change, message):
    path, _ = data
    with TokenLoader(path, B=2, T=50) as loader:
        windows(loader, 3)
        state = loader.state_dict()
        change(state)
        with pytest.raises(LoaderError, match=message):
            loader.load_state_dict(state)
        with pytest.raises(LoaderError, match="a loader state is a dict"):
            loader.load_state_dict([1, 2])  # type: ignore[arg-type]


def test_a_state_for_shards_of_other_sizes_with_the_same_names_and_total_is_refused(tmp_path):
    """Without meta.json there is no sha256 to compare: the shard names and each one's token
    count identify the data. The same names and the same total, split otherwise, are another
    stream, whose windows at the saved step are other tokens."""
    saved, other = tmp_path / "saved", tmp_path / "other"
    for directory, sizes in ((saved, [1000, 517, 2000]), (other, [1000, 518, 1999])):
        directory.mkdir()
        write_dataset(directory, sizes)
        (directory / "meta.json").unlink()
    with TokenLoader(saved, B=2, T=50) as loader:
        windows(loader, 3)
        state = loader.state_dict()
    with TokenLoader(other, B=2, T=50) as loader, pytest.raises(
            DatasetMismatch, match=r"another dataset: 3 shard\(s\), N=3517 tokens; "
                                   r"this loader reads 3 shard\(s\), "
                               r"N=3517 tokens "
                               r"\(first difference: d_train_000001.bin of 517 tokens there, "
                               r"d_train_000001.bin of 518 tokens here\)"):
        loader.load_state_dict(state)


def test_a_shuffled_state_is_checked_in_its_own_order_whatever_the_loader_was_built_with(data, monkeypatch):
    """load_state_dict adopts the state's shuffle and seed, and the order digest is checked in
    that order: checked in the loader's own (built unshuffled, as a script that leaves the
    shuffle to the checkpoint does), a resume under a numpy that shuffles otherwise was taken."""
    path, _ = data
    with TokenLoader(path, B=2, T=50, shuffle=True, seed=3, prefetch=0) as saved:
        windows(saved, saved.steps_per_epoch + 4)  # inside epoch 1
        state = saved.state_dict()
    other_numpy_shuffle(monkeypatch)
    for built in ({"shuffle": False}, {"shuffle": True, "seed": 0}):
        with TokenLoader(path, B=2, T=50, prefetch=0, **built) as resumed:
            refused = r"^the shuffled order of epoch 1 drawn here \(numpy 0\.0-other\) is not the one"
            with pytest.raises(LoaderError, match=refused):
                resumed.load_state_dict(state)
            assert (resumed.step, resumed.shuffle) == (0, built["shuffle"])


def test_a_state_saved_under_a_utf8_locale_is_for_the_same_shards_read_under_another():
    """The other way round from the test above: the loader under LC_ALL=C names its shards by
    their bytes, surrogate-escaped ('d\\udcc3\\udca9...'), the state (and meta.json) in UTF-8."""
    name = "dé_train_000000.bin"
    as_c = name.encode("utf-8").decode("ascii", "surrogateescape")
    state = {"num_tokens": 1000, "shards": [[name, 1000, "ab" * 32]]}
    assert dataset_difference(state, [[as_c, 1000, "ab" * 32]], 1000) is None
    assert dataset_difference(state, [[as_c, 1000, "cd" * 32]], 1000).startswith(f"{name} has the same name")


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_step_or_an_epoch_that_is_none_is_a_clear_error(data, shuffle):
    """window_start(1.5) answered a fractional offset and window_start(True) step 1's; an epoch
    of -1 reached numpy's SeedSequence (its own ValueError) when shuffling."""
    path, _ = data
    with TokenLoader(path, B=2, T=50, shuffle=shuffle, prefetch=0) as loader:
        for step in (1.5, True, "3", -1):
            with pytest.raises(LoaderError, match=f"^step must be an integer >= 0, got {step!r}$"):
                loader.window_start(step)
        for epoch in (-1, 0.5, False):
            with pytest.raises(LoaderError, match=f"^epoch must be an integer >= 0, got {epoch!r}$"):
                loader.order_digest(epoch)
        assert loader.window_start(np.int64(3)) == loader.window_start(3)  # numpy integers are steps


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_a_loader_cannot_be_pickled_or_copied(tmp_path, how):
    """pickle.dumps raised a raw TypeError about an mmap; copy.copy gave a loader sharing the ring
    (both handed out the same windows). Each process or worker makes its own from the path."""
    import copy
    import pickle

    write_shard(tmp_path / shard_name("c", "train", 0), np.arange(500, dtype=np.uint16))
    copier = {"pickle": pickle.dumps, "copy": copy.copy, "deepcopy": copy.deepcopy}[how]
    with TokenLoader(tmp_path, B=2, T=8) as loader:
        with pytest.raises(LoaderError, match=r"^a TokenLoader cannot be pickled or copied: create one in "
                                              r"each process or worker \(give it the path, and the "
                                              r"state_dict\(\) to load_state_dict\(\)\)$"):
            copier(loader)
        assert loader.next_window()[:3].tolist() == [0, 1, 2]  # unharmed
