"""A tiny random causal LM with a real byte-level BPE tokenizer, built offline in a second.

Every unit test that needs "a model" uses this instead of a hub download. The tokenizer speaks
ChatML (the template of SmolLM2 and Qwen2.5), so prompts look like the real ones.
"""
from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Text the BPE merges are learned from: the agent's tags and common QA words, so that tags are
# few tokens and sequences in tests stay short.
_TRAINING_TEXT = [
    "<think> I need to search for the answer. </think>",
    "<search> capital of France, population of Paris </search>",
    "<information> Doc 1(Title: Paris) Paris is the capital of France. </information>",
    "<answer> Paris </answer> <answer> Beijing </answer>",
    "Answer the given question. You must conduct reasoning inside think tags first.",
    "Who was born first? Which city is the capital? What year did the film come out?",
    "The quick brown fox jumps over the lazy dog 0123456789 , . ; : ! ? ' \" ( ) [ ] { }",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """Write a random Llama (2 layers, hidden 64) + tokenizer to `out_dir`; return the path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_encoder(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random sentence-transformers encoder (2-layer BERT, hidden 32, mean pooling) with a
    WordPiece tokenizer learned from the tests' text to `out_dir`; return the path. For tests where
    the pip-shipped MiniLM is not installed."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out_dir)
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
    tok.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    body = out / "bert"
    bert.save_pretrained(body)
    tokenizer.save_pretrained(body)
    transformer = models.Transformer(str(body), max_seq_length=128)
    SentenceTransformer(modules=[transformer, models.Pooling(32, pooling_mode="mean"), models.Normalize()]).save(str(out))
    return out
