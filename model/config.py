"""GPT-2 configuration: one validated dataclass, the named presets, and the analytic counts.

The parameter and FLOP counts live here, as formulas on the config, so that a benchmark can
report them for gpt2-xl without building 1.5B parameters, and so that there is exactly one
definition of each (`GPT.num_params()` is cross-checked against the formula in the tests).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

GPT2_VOCAB_SIZE = 50257  # 50,000 BPE merges + 256 byte tokens + <|endoftext|> (id 50256)
PADDED_VOCAB_SIZE = 50304  # 50257 rounded up to a multiple of 64 (= 786 * 64): faster matmuls

_POSITIVE_INT_FIELDS = ("block_size", "vocab_size", "padded_vocab_size", "n_layer", "n_head", "n_embd")


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-2 model, checked at construction so a bad one fails before any GPU work.

    Frozen: a config is a value; derive variants with `GPTConfig.preset(name, **overrides)` or
    `dataclasses.replace`, both of which validate again. The defaults are GPT-2 small (124M).
    """

    block_size: int = 1024  # longest context: the number of learned position embeddings
    vocab_size: int = GPT2_VOCAB_SIZE  # real tokens; only these can be predicted
    # Rows of the (tied) token embedding. The extra 47 rows hold no real token (GPT says who
    # checks input ids) and their logits are sliced off, but the lm_head matmul runs over all
    # of them: 50304 = 64 * 786 tiles evenly on tensor cores, which makes the largest matmul in
    # the model faster.
    padded_vocab_size: int = PADDED_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # GPT-2 pretraining used 0.1; 0.0 is the usual choice for large corpora

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # np.int64 (a sweep's np.arange) made a plain int
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"every attention head gets n_embd // n_head dimensions"
            )
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"GPTConfig.padded_vocab_size ({self.padded_vocab_size}) must be >= "
                f"vocab_size ({self.vocab_size}): padding only adds rows"
            )
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a probability in [0, 1), got {dropout!r}")
        # numpy scalars (np.float32 too) are taken, and made plain numbers: checkpoints hold
        # model_config, and torch.load(weights_only=True) refuses numpy scalars
        object.__setattr__(self, "dropout", float(dropout))

    @property
    def head_size(self) -> int:
        """Dimensions per attention head (Q in the FLOPs formula)."""
        return self.n_embd // self.n_head

    @classmethod
    def presets(cls) -> tuple[str, ...]:
        """The valid preset names, in size order (tiny last: it is for tests)."""
        return tuple(PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: object) -> GPTConfig:
        """The preset called exactly `name`, with any fields overridden (and validated again).

        Names are matched exactly, never by substring, so a typo cannot silently pick a
        different model; an unknown name or field is a ValueError that lists the valid ones.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown GPTConfig field(s) {', '.join(unknown)}; valid fields: {', '.join(fields)}"
            )
        return dataclasses.replace(PRESETS[name], **overrides)

    def num_params(self, *, padded_vocab: bool = True, position_embeddings: bool = True) -> int:
        """Parameters of `GPT(self)` without building it; the tied embedding is counted once.

        padded_vocab=True counts the embedding as built (padded_vocab_size rows);
        padded_vocab=False counts vocab_size rows, the figure usually quoted (124,439,808 for
        gpt2). position_embeddings=False leaves out the block_size * n_embd position table,
        which costs no FLOPs (see `flops_per_token`).
        """
        C, L = self.n_embd, self.n_layer
        vocab = self.padded_vocab_size if padded_vocab else self.vocab_size
        attention = (C * 3 * C + 3 * C) + (C * C + C)  # c_attn (q, k, v in one) + c_proj
        mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)  # c_fc + c_proj
        block = attention + mlp + 2 * (2 * C)  # + ln_1 and ln_2 (weight and bias each)
        total = vocab * C + L * block + 2 * C  # token embedding (= lm_head) + blocks + ln_f
        if position_embeddings:
            total += self.block_size * C
        return total

    def flops_per_token(self, T: int) -> int:
        """Training FLOPs per token at sequence length T: 6N + 12*L*H*Q*T (the PaLM convention).

        N is the parameter count without position embeddings (a table lookup, no FLOPs), and
        WITH the padded token embedding: that weight is the lm_head, whose matmul runs over the
        padded vocabulary. 6N = 2 (multiply-add) * 3 (forward + backward) FLOPs per weight.
        12*L*H*Q*T is attention's QK^T and AV matmuls (2 * 2 * 3 * T * H * Q per layer), counted
        over the full T x T square although the causal half is skipped. Layer norms, GELU,
        softmax and the loss are left out: they are small and memory-bound.
        """
        if isinstance(T, bool) or not isinstance(T, numbers.Integral) or not 1 <= T <= self.block_size:
            raise ValueError(f"T must be an integer in [1, block_size={self.block_size}], got {T!r}")
        T = int(T)  # np.int64 too: the count stays a Python int
        N = self.num_params(padded_vocab=True, position_embeddings=False)
        return 6 * N + 12 * self.n_layer * self.n_head * self.head_size * T


# GPT-2's four released sizes (Radford et al. 2019, as in OpenAI's and Hugging Face's configs),
# plus `tiny`: 2 layers, 32 dims, for tests. Every preset keeps GPT-2's real vocabulary so that
# it works with the real tokenizer and the real shards. Read-only: derive with preset(**overrides).
PRESETS: Mapping[str, GPTConfig] = MappingProxyType({
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64),  # 1.6M, almost all embedding
})
