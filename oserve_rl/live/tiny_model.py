"""A tiny random-weight Llama + a locally trained byte-level BPE tokenizer, for live tests without any hub.

Weights cannot be downloaded here and none are committed: this builds, in ~30 s
on CPU, a ``LlamaForCausalLM`` (hidden 128, FFN 256, 2 layers, 4 heads / 2 KV
heads, 2048 positions) with random weights and a ~2k-token byte-level BPE
tokenizer trained on local text (this repository's sources), with a trivial
chat template, saved with ``save_pretrained`` so vLLM can serve it.

It needs ``torch``, ``transformers`` and ``tokenizers``, which live in the vLLM
venv (``.venv-vllm``), not in the main ``.venv``. :func:`build_tiny_model` therefore
runs this file as a script under the vLLM interpreter when the current one lacks
them (the file imports nothing from ``oserve_rl`` at module level for that reason).

>>> from oserve_rl.live.tiny_model import build_tiny_model
>>> build_tiny_model("/tmp/tiny-llama", python=".venv-vllm/bin/python")   # doctest: +SKIP
PosixPath('/tmp/tiny-llama')

Command line (vLLM venv): ``.venv-vllm/bin/python oserve_rl/live/tiny_model.py OUT_DIR``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

VOCAB_SIZE = 2048
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_MARKER = "oserve-tiny-llama.json"


def _corpus(limit_bytes: int = 2_000_000) -> list[str]:
    """Local text to train the tokenizer on: this repository's .py/.md files (plus a fallback)."""
    root = Path(__file__).resolve().parents[2]
    texts: list[str] = []
    total = 0
    for pattern in ("**/*.md", "**/*.py"):
        for p in sorted(root.glob(pattern)):
            if any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            try:
                t = p.read_text(errors="ignore")
            except OSError:
                continue
            texts.append(t)
            total += len(t)
            if total > limit_bytes:
                return texts
    texts.append(" ".join(f"hello world request {i} token" for i in range(5000)))
    return texts


def _build_here(out_dir: Path, seed: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "</s>", "<unk>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        torch_dtype="float32", tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / _MARKER).write_text(json.dumps({"seed": seed, "vocab_size": len(fast)}))
    return out_dir


def is_tiny_model_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a complete tiny model built by this module."""
    p = Path(path)
    return (p / _MARKER).exists() and (p / "config.json").exists() and (p / "tokenizer.json").exists()


def build_tiny_model(out_dir: str | Path, *, python: str | Path | None = None, seed: int = 0,
                     timeout_s: float = 600.0) -> Path:
    """Build the tiny model in ``out_dir`` (skipped when already there) and return its path.

    Runs in this interpreter when it has torch + transformers + tokenizers, else
    under ``python`` (the vLLM venv's interpreter).
    """
    from oserve_rl.errors import ConfigError

    out = Path(out_dir).resolve()
    if is_tiny_model_dir(out):
        return out
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers")):
        return _build_here(out, seed)
    if python is None or not Path(python).exists():
        raise ConfigError(
            f"building the tiny model needs torch, transformers and tokenizers: not in this interpreter, and "
            f"vLLM python {str(python)!r} not found (run scripts/setup_live.sh)"
        )
    proc = subprocess.run(
        [str(python), str(Path(__file__).resolve()), str(out), "--seed", str(seed)],
        capture_output=True, text=True, timeout=timeout_s,
    )
    if proc.returncode != 0 or not is_tiny_model_dir(out):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise ConfigError(f"building the tiny model in {out} with {python} failed (exit {proc.returncode}):\n{tail}")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build a tiny random Llama + BPE tokenizer for live vLLM tests.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out_dir).resolve()
    if not is_tiny_model_dir(out):
        _build_here(out, args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
