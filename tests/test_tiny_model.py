import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_round_trip(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = "<search> capital of France </search>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token_id != tok.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))
