"""GPT-2: configuration and presets, the model, and FLOPs / MFU accounting. Imports torch only.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig.preset("gpt2"))   # gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny
    logits, loss = model(idx, targets)
    mfu(tokens_per_s, model.flops_per_token(T), torch.cuda.get_device_name())
    to_hf_state_dict(model.state_dict(), model.config)   # and back: from_hf_state_dict

model.weights reads the GPT-2 state dicts of nanoGPT, Hugging Face and wrapped models as ours.
"""

from .config import GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE, PRESETS, GPTConfig
from .flops import PEAK_FLOPS, mfu, peak_flops
from .gpt import GPT, raw_module
from .hf import from_hf_state_dict, to_hf_state_dict

__all__ = [
    "GPT",
    "GPT2_VOCAB_SIZE",
    "GPTConfig",
    "PADDED_VOCAB_SIZE",
    "PEAK_FLOPS",
    "PRESETS",
    "mfu",
    "peak_flops",
    "from_hf_state_dict",
    "raw_module",
    "to_hf_state_dict",
]
