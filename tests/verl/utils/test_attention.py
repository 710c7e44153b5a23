import torch
from transformers import AutoModelForCausalLM, DynamicCache

from verl.utils.attention import NAME, use_for_generation


def load(path, implementation):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=implementation).eval()


def test_sdpa_gqa_scores_like_sdpa_through_padding_and_a_cached_continuation(tiny_model_dir):
    sdpa, gqa = load(tiny_model_dir, "sdpa"), load(tiny_model_dir, NAME)
    assert sdpa.config.num_key_value_heads < sdpa.config.num_attention_heads  # the grouped case
    torch.manual_seed(0)
    ids = torch.randint(3, sdpa.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :2] = 0
    new = torch.randint(3, sdpa.config.vocab_size, (3, 2))
    logits = []
    with torch.no_grad():
        for model in (sdpa, gqa):
            cache = DynamicCache()
            first = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
            full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
            second = model(input_ids=new, attention_mask=full_mask, past_key_values=cache, use_cache=True).logits
            logits.append(torch.cat([first, second], dim=1))
    real = torch.cat([mask, torch.ones_like(new)], dim=1).bool()
    assert torch.allclose(logits[0][real], logits[1][real], atol=1e-5)
    # an unmasked prefill takes the causal flag instead of a mask
    with torch.no_grad():
        assert torch.allclose(sdpa(input_ids=ids).logits, gqa(input_ids=ids).logits, atol=1e-5)


def test_generation_switches_sdpa_only(tiny_model_dir):
    sdpa = use_for_generation(load(tiny_model_dir, "sdpa"))
    assert sdpa.config._attn_implementation == NAME
    torch.manual_seed(0)
    ids = torch.randint(3, sdpa.config.vocab_size, (2, 6))
    reference = load(tiny_model_dir, "sdpa")
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(sdpa.generate(input_ids=ids, **kwargs), reference.generate(input_ids=ids, **kwargs))
    assert use_for_generation(load(tiny_model_dir, "eager")).config._attn_implementation == "eager"
