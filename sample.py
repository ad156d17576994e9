"""Generate text from a train.py checkpoint: `python sample.py out/run --prompt "ROMEO:"`.

CKPT is a checkpoint file (`ckpt_<step>.pt`) or an --out directory, whose newest checkpoint is
taken, or a Hugging Face GPT-2 state dict saved with torch.save (OpenAI's released weights:
`python sample.py gpt2.pt --model gpt2`). The prompt (--prompt, or a file's text with
--prompt-file) is encoded with the GPT-2 tokenizer after an EOT, as every training document
begins, and each sample is printed as the prompt plus what the model wrote, decoded (one sample
as it is generated, token by token). Sampling: temperature (0: always the likeliest token),
top-k, a seed (the same seed, checkpoint and device give the same samples). In train.py's
--dtype auto: bf16 autocast on a GPU that computes in it, fp16 on an older CUDA GPU, fp32
elsewhere. The model is found, checked and loaded by trainer/sampling_model.py; this file
prints its samples.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

# (prep.signals imports the standard library's only: ready before the slow imports below)
from prep.signals import ignore_stops_at_the_end, interrupt_exits_while_importing, stops_raise

if __name__ == "__main__":
    ignore_stops_at_the_end()  # (before torch registers its exit callbacks)

# Ctrl-C (130) or SIGTERM (143) during the seconds that importing click and torch takes (run as
# a script): an exit at once, with one line
with interrupt_exits_while_importing(__name__ == "__main__"):
    from prep.errors import UserCommand, UserError  # first: see prep.streams.reserve_standard_fds
    from prep.streams import say

    import click
    import torch
    from click.core import ParameterSource

    from model import GPTConfig
    from prep.sniff import BOM
    from trainer.config import DEVICES, SEED_MAX, TrainConfig
    from trainer.evaluation import SAMPLE_TOP_K, gpt2_encoding, sample_texts
    from trainer.runtime import is_out_of_memory, make_runtime
    from trainer.sampling_model import newest_model


class Streamer:
    """One sample printed as it is generated: the prompt with the first token, then each token's
    text as soon as its bytes complete a character (a GPT-2 token may hold part of one). What it
    prints is what decoding the whole sample prints (UTF-8, invalid bytes replaced, as tiktoken
    decodes), and a Ctrl-C keeps what is on the screen; a run that fails before its first token
    prints nothing."""

    def __init__(self, prompt: Sequence[int]) -> None:
        from prep.tokenizer import get_encoding

        self.encoding = get_encoding()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.prompt: bytes | None = self.encoding.decode_bytes(list(prompt))  # None once printed

    def _echo(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if text:
            echo_sample(text, nl=False)

    def __call__(self, new_ids: torch.Tensor) -> None:
        token = self.encoding.decode_single_token_bytes(int(new_ids[0, 0]))  # sync: sampling only
        if self.prompt is not None:
            token, self.prompt = self.prompt + token, None
        self._echo(token)

    def finish(self) -> None:
        """The bytes left (an incomplete character: U+FFFD) and the line's end, where anything
        was printed."""
        if self.prompt is None:
            self._echo(b"", final=True)
            echo_sample("")


def echo_sample(text: str, nl: bool = True) -> None:
    """A sample's text on stdout as the model wrote it: click.echo, which flushes, but with
    color=True, so that escape sequences the model wrote are not stripped on a pipe (click
    strips only whole ones within a call, and a stream's come in pieces: both ways alike)."""
    click.echo(text, nl=nl, color=True)


def prompt_tokens(prompt: str, block_size: int) -> list[int]:
    """The prompt's GPT-2 tokens (special-token text is plain text here); the EOT before them
    is sample_texts'."""
    tokens = gpt2_encoding().encode_ordinary(prompt)
    if len(tokens) + 1 > block_size:
        say(f"note: the prompt is {len(tokens):,} tokens; the model sees the last {block_size:,} (its block size)")
    return tokens


def check_prompt(prompt: str) -> None:
    """A user error where `prompt` holds bytes the command line could not decode as UTF-8 (a
    Latin-1 file's text), which Python keeps as lone surrogates: the tokenizer replaced each
    with U+FFFD, and the samples continued another prompt than the one given, without a word
    (prep tokenize refuses such text too)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # the characters before e.start encode: their bytes are where it is
        at = len(prompt[:e.start].encode("utf-8"))
        raise UserError(f"--prompt: invalid UTF-8 at byte {at}: pass the text in UTF-8 "
                        f"(e.g. converted with iconv -t UTF-8)") from None


def read_prompt(file: BinaryIO) -> str:
    """--prompt-file's text, as it is (a final newline too: the samples continue after it), less
    a UTF-8 byte-order mark at its start (it marks the file, as prep tokenize drops it); a user
    error where it is no UTF-8 or cannot be read."""
    label = getattr(file, "name", "<stdin>")  # (CliRunner's stdin has none)
    label = "-" if label == "<stdin>" else label
    try:
        data = file.read()
    except OSError as e:  # (a directory opens, then fails to read, on some systems)
        raise UserError(f"--prompt-file {label}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as e:
        raise UserError(f"--prompt-file {label}: invalid UTF-8 at byte {e.start}: pass the text in UTF-8 "
                        f"(e.g. converted with iconv -t UTF-8)") from None


SAMPLE_BATCH = 64  # samples drawn side by side at most: --num-samples in the millions is a loop, not a batch


@click.command(cls=UserCommand, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("ckpt", type=click.Path(readable=False))
@click.option("--prompt", default="", show_default="none: a document's start",
              help="Text the samples continue (<|endoftext|> in it is that text, not the EOT token).")
@click.option("--prompt-file", type=click.File("rb"), default=None, metavar="FILE",
              help="Read the prompt from this file ('-': standard input), as it is, a final newline too; "
                   "instead of --prompt.")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, help="Samples to draw.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=100, help="Tokens generated per sample.")
@click.option("--temperature", type=click.FloatRange(min=0, max=1e6), default=1.0,
              help="Logit temperature; 0: always the likeliest token.")
@click.option("--top-k", type=click.IntRange(min=0), default=SAMPLE_TOP_K,
              help="Sample among the k likeliest tokens; 0: among all.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=1337,
              help=f"Sampling seed. Samples drawn together (up to {SAMPLE_BATCH}) share its random stream, so "
                   f"the same seed, --num-samples and device give the same samples (another --num-samples "
                   f"other ones).")
@click.option("--device", type=click.Choice(DEVICES), default="auto",
              help="auto: cuda, then mps, then cpu.")
@click.option("--model", "preset", default=None, show_default="the checkpoint's; gpt2 for HF weights",
              help="The preset of a Hugging Face GPT-2 state dict given as CKPT (its n_head is not in the weights).")
@click.option("--n-head", type=click.IntRange(min=1), default=None, show_default="the preset's",
              help="The attention heads of a state dict given as CKPT; with it, its layers, width and positions "
                   "are read off the weights (a nanoGPT model of no preset's shape).")
def main(ckpt: str, prompt: str, prompt_file: BinaryIO | None, num_samples: int, max_new_tokens: int, temperature: float, top_k: int,
         seed: int, device: str, preset: str | None, n_head: int | None) -> None:
    """Print samples from CKPT: a train.py checkpoint file, an --out directory (its newest), or
    a Hugging Face GPT-2 state dict saved with torch.save (OpenAI's released weights)."""
    if math.isnan(temperature):  # click's FloatRange lets nan through
        raise UserError("--temperature must be a number >= 0, got nan")
    check_prompt(prompt)
    if prompt_file is not None:  # read before the checkpoint: its mistakes come first
        if click.get_current_context().get_parameter_source("prompt") is not ParameterSource.DEFAULT:
            raise UserError("--prompt and --prompt-file: give the prompt one way, not both")
        prompt = read_prompt(prompt_file)
    if not ckpt:  # Path("") is the current directory
        raise UserError("CKPT must name a checkpoint file or an --out directory, got ''")
    if preset is not None:  # a bad name is a mistake whatever CKPT turns out to be ('' was gpt2)
        try:
            GPTConfig.preset(preset)
        except ValueError as e:
            raise UserError(f"--model: {e}") from None
    with stops_raise():  # SIGTERM or SIGHUP: the streamed line ends, and UserCommand says which stopped it
        draw_samples(Path(ckpt), prompt, num_samples, max_new_tokens, temperature, top_k, seed, device, preset, n_head)


def draw_samples(given: Path, prompt: str, num_samples: int, max_new_tokens: int, temperature: float, top_k: int,
                 seed: int, device: str, preset: str | None, n_head: int | None) -> None:
    """main's work, its arguments checked: the model loaded, the samples printed."""
    gpt2_encoding()  # the prompt and samples need it: said before the checkpoint is read (gpt2-xl's: minutes)
    rt = make_runtime(TrainConfig(device=device, compile=False))
    path, (model, source) = newest_model(given, rt, preset, n_head)
    context = prompt_tokens(prompt, model.config.block_size)
    generator = torch.Generator(device=rt.device).manual_seed(seed)
    say(f"{path} ({source}), {rt.device}, {rt.dtype}: {num_samples} sample(s) of {max_new_tokens} tokens, " +
        (f"temperature {temperature:g}, top-k {top_k or 'off'}" if temperature
         else "temperature 0 (the likeliest token each time)"))
    # one sample streams as it grows; several are drawn side by side, SAMPLE_BATCH at a time (the
    # memory of one batch, however many are asked for), and each batch prints when it is done
    streamer = Streamer(context) if num_samples == 1 else None
    try:
        for drawn in range(0, num_samples, SAMPLE_BATCH):
            batch = min(SAMPLE_BATCH, num_samples - drawn)
            texts = sample_texts(model, rt, generator, max_new_tokens, prompt=context, num=batch,
                                       temperature=temperature, top_k=top_k or None, on_token=streamer)
            for i, text in enumerate(texts if streamer is None else ()):
                if drawn + i:
                    echo_sample("-" * 40)
                echo_sample(text)
    except FloatingPointError as e:  # finite weights whose logits overflow
        raise UserError(f"checkpoint {path}: {e}: no text to sample") from None
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise UserError(f"out of memory on {rt.device} drawing {batch} sample(s) of {max_new_tokens} tokens side by "
                        f"side" + (": ask for fewer --num-samples" if batch > 1 else "")) from None
    finally:
        if streamer is not None:  # also on a Ctrl-C or an error: the line ends
            streamer.finish()

if __name__ == "__main__":
    main()
