"""DalleBartForImageGeneration (DALL·E Mini / Mega): cached against uncached decoding, guidance as transformers' CFG
processor computes it, image codes only, the caption's pads masked, cross-attention keys computed once, save / load,
loss and config checks. Tiny random models; the comparison with min-dalle's own code is in test_convert_dalle_mega.py
(marker `parity`)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from hf_dalle import DalleBartConfig, DalleBartForImageGeneration
from hf_dalle.models.dalle_bart import DalleBartModel
from hf_dalle.testing_utils import random_min_dalle_state_dicts


def tiny_config(**overrides) -> DalleBartConfig:
    sizes = {
        "text_vocab_size": 64,
        "image_vocab_size": 32,
        "decoder_vocab_size": 35,
        "max_text_length": 8,
        "image_grid_size": 4,
        "hidden_size": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "decoder_start_token_id": 31,
    }
    return DalleBartConfig(**{**sizes, **overrides})


def tiny_model(seed: int = 0, **overrides) -> DalleBartForImageGeneration:
    """A tiny model whose every weight is off its initial value (LayerNorms included)."""
    config = tiny_config(**overrides)
    encoder, decoder = random_min_dalle_state_dicts(config, seed=seed)
    # Larger weights than the 0.02 of the defaults, so that logits differ clearly between codes.
    state_dict = {f"model.encoder.{k}": v * (5 if v.ndim == 2 else 1) for k, v in encoder.items()}
    state_dict.update({f"model.decoder.{k}": v * (5 if v.ndim == 2 else 1) for k, v in decoder.items()})
    state_dict["lm_head.weight"] = state_dict.pop("model.decoder.lm_head.weight")
    model = DalleBartForImageGeneration(config)
    model.load_state_dict(state_dict)
    return model.eval()


CAPTIONS = torch.tensor([[0, 9, 12, 2, 1, 1, 1, 1], [0, 5, 7, 8, 9, 13, 2, 1]])


def test_cached_generation_equals_uncached_with_and_without_guidance():
    model = tiny_model()
    for guidance in (None, 5.0):
        cached = model.generate(CAPTIONS, do_sample=False, guidance_scale=guidance)
        uncached = model.generate(CAPTIONS, do_sample=False, guidance_scale=guidance, use_cache=False)
        assert cached.shape == (2, 1 + 16) and (cached[:, 0] == 31).all()
        assert torch.equal(cached, uncached)
        # The two captions draw different codes (the test would be empty if every row were alike).
        assert not torch.equal(cached[0], cached[1])


def reference_guided_codes(model: DalleBartForImageGeneration, captions: torch.Tensor, scale: float) -> torch.Tensor:
    """Greedy guided decoding written out, no cache: the captions and `<s> </s>` + pads through the encoder, the
    whole decoder sequence at every step, `uncond + scale * (cond - uncond)` over the image codes, argmax."""
    config = model.config
    batch = len(captions)
    unconditional = torch.full_like(captions, 1)
    unconditional[:, :2] = torch.tensor([0, 2])
    both = torch.cat([captions, unconditional])
    sequence = torch.full((batch, 1), config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(config.image_seq_length):
            logits = model(input_ids=both, decoder_input_ids=sequence.repeat(2, 1), use_cache=False).logits[:, -1]
            cond, uncond = logits[:batch, : config.image_vocab_size], logits[batch:, : config.image_vocab_size]
            guided = uncond + scale * (cond - uncond)
            sequence = torch.cat([sequence, guided.argmax(-1, keepdim=True)], dim=1)
    return sequence


def test_guided_generation_is_classifier_free_guidance_against_the_empty_caption():
    model = tiny_model()
    expected = reference_guided_codes(model, CAPTIONS, 6.0)
    assert torch.equal(model.generate(CAPTIONS, do_sample=False, guidance_scale=6.0), expected)
    # Guidance changes the codes here, so the comparison above checks the guided logits.
    assert not torch.equal(model.generate(CAPTIONS, do_sample=False), expected)
    # Each caption draws the same codes alone as in a batch: the doubled halves stay aligned.
    alone = model.generate(CAPTIONS[1:], do_sample=False, guidance_scale=6.0)
    assert torch.equal(alone[0], expected[1])


def test_sampled_guided_generation_with_several_sequences_per_caption():
    model = tiny_model()
    torch.manual_seed(0)
    sequences = model.generate(CAPTIONS, do_sample=True, top_k=4, guidance_scale=3.0, num_return_sequences=3)
    assert sequences.shape == (6, 17)
    codes = model.image_codes_from_ids(sequences)
    assert codes.shape == (6, 4, 4) and codes.max() < 32
    # top_k=1 is greedy, whatever the seed.
    top1 = model.generate(CAPTIONS, do_sample=True, top_k=1, guidance_scale=3.0)
    assert torch.equal(top1, model.generate(CAPTIONS, do_sample=False, guidance_scale=3.0))


def test_only_image_codes_are_drawn():
    model = tiny_model()
    bonus = torch.zeros(35)
    bonus[32:] = 1000.0  # the head's rows past the image codes, by far the most likely
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bonus)
    for guidance in (None, 4.0):
        assert model.generate(CAPTIONS, do_sample=False, guidance_scale=guidance)[:, 1:].max() < 32
        assert model.generate(CAPTIONS, do_sample=True, top_k=3, guidance_scale=guidance)[:, 1:].max() < 32
    logits = model(input_ids=CAPTIONS, decoder_input_ids=torch.full((2, 1), 31)).logits
    assert logits.shape[-1] == 35 and (logits.argmax(-1) >= 32).all()  # forward leaves the head as it is


def test_caption_pads_are_masked_out_of_every_attention():
    model = tiny_model()
    decoder_ids = torch.tensor([[31, 4, 9, 20]] * 2)
    before = model(input_ids=CAPTIONS, decoder_input_ids=decoder_ids).logits
    with torch.no_grad():
        model.model.encoder.embed_tokens.weight[1] += 10  # the pad's embedding
    after = model(input_ids=CAPTIONS, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    # An explicit mask that keeps the pads does see them.
    keep_all = torch.ones_like(CAPTIONS)
    assert not torch.allclose(model(CAPTIONS, keep_all, decoder_ids).logits, before, atol=1e-3)


def test_cross_attention_keys_are_computed_once_per_caption():
    model = tiny_model()
    calls = {"cross": 0, "self": 0}
    layer = model.model.decoder.layers[1]
    layer.encoder_attn.k_proj.register_forward_hook(lambda *_: calls.__setitem__("cross", calls["cross"] + 1))
    layer.self_attn.k_proj.register_forward_hook(lambda *_: calls.__setitem__("self", calls["self"] + 1))
    model.generate(CAPTIONS, do_sample=False, guidance_scale=3.0)
    assert calls == {"cross": 1, "self": 16}  # once per call, and once per step


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementations_agree(attn_implementation):
    model = tiny_model()
    model.set_attn_implementation(attn_implementation)
    decoder_ids = torch.tensor([[31, 4, 9, 20, 3]] * 2)
    outputs = model(CAPTIONS, decoder_input_ids=decoder_ids, output_attentions=True, output_hidden_states=True)
    model.set_attn_implementation("eager" if attn_implementation == "sdpa" else "sdpa")
    other = model(CAPTIONS, decoder_input_ids=decoder_ids)
    torch.testing.assert_close(outputs.logits, other.logits, rtol=1e-5, atol=1e-5)
    assert len(outputs.encoder_hidden_states) == 3 and len(outputs.decoder_hidden_states) == 3
    if attn_implementation == "eager":
        weights = outputs.cross_attentions[0]  # [B, heads, 5, 8]: no weight on the pads
        assert weights.shape == (2, 4, 5, 8) and weights[0, :, :, 4:].abs().max() == 0


def test_decoding_step_by_step_with_the_cache_equals_one_pass():
    model = tiny_model()
    decoder_ids = torch.tensor([[31, 4, 9, 20, 3, 7]] * 2)
    full = model(CAPTIONS, decoder_input_ids=decoder_ids, use_cache=False).logits
    cache = model.make_cache()
    encoder_outputs = model.get_encoder()(CAPTIONS)
    mask = (CAPTIONS != 1).long()
    steps = [
        model(
            attention_mask=mask,
            decoder_input_ids=decoder_ids[:, i : i + 1],
            encoder_outputs=encoder_outputs,
            cache=cache,
            use_cache=True,
        ).logits
        for i in range(6)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    # A primed start: several codes at once into a fresh cache (causal among themselves), then one at a time.
    cache = model.make_cache()
    kwargs = {"attention_mask": mask, "encoder_outputs": encoder_outputs, "cache": cache, "use_cache": True}
    primed = [model(decoder_input_ids=decoder_ids[:, :4], **kwargs).logits]
    primed += [model(decoder_input_ids=decoder_ids[:, i : i + 1], **kwargs).logits for i in (4, 5)]
    torch.testing.assert_close(torch.cat(primed, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positions for image_grid_size"):
        model(
            attention_mask=mask,
            decoder_input_ids=torch.ones(2, 11, dtype=torch.long),
            encoder_outputs=encoder_outputs,
            cache=cache,
        )


def test_loss_is_the_cross_entropy_of_the_shifted_codes():
    model = tiny_model().train()
    labels = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    labels[1, 5] = -100
    output = model(CAPTIONS, labels=labels)
    decoder_ids = torch.cat([torch.full((2, 1), 31), labels[:, :-1].clamp(min=0)], dim=1)
    decoder_ids[1, 6] = 31  # an ignored label feeds the next position as the start token
    logits = model(CAPTIONS, decoder_input_ids=decoder_ids, use_cache=False).logits
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    gradient = model.model.encoder.layers[0].glu.fc0.weight.grad.clone()
    assert gradient.abs().sum() > 0
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(CAPTIONS, labels=labels).loss.backward()
    torch.testing.assert_close(model.model.encoder.layers[0].glu.fc0.weight.grad, gradient)


def test_save_and_load_through_the_auto_classes(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert type(AutoConfig.from_pretrained(tmp_path)) is DalleBartConfig
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is DalleBartForImageGeneration
    assert torch.equal(loaded.generate(CAPTIONS, do_sample=False), model.generate(CAPTIONS, do_sample=False))
    assert type(AutoModel.from_config(model.config)) is DalleBartModel
    # Without a generation_config.json, generate still writes every code.
    (tmp_path / "generation_config.json").unlink()
    assert DalleBartForImageGeneration.from_pretrained(tmp_path).generate(CAPTIONS[:1]).shape == (1, 17)


def test_unconditional_ids_and_code_grids():
    model = tiny_model()
    assert model.unconditional_input_ids(1).tolist() == [[0, 2, 1, 1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="complete decoder sequences"):
        model.image_codes_from_ids(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the image codes"):
        model.image_codes_from_ids(torch.full((1, 17), 33))
    with pytest.raises(ValueError, match="needs the caption ids"):
        model.generate(encoder_outputs=model.get_encoder()(CAPTIONS), guidance_scale=2.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": 5}, "multiple of `num_attention_heads`"),
        ({"decoder_vocab_size": 30}, "at least `image_vocab_size`"),
        ({"decoder_start_token_id": 35}, "row of the decoder's table"),
        ({"eos_token_id": 2}, "`eos_token_id` must be None"),
        ({"text_pad_token_id": 64}, "text token id"),
        ({"dropout": 1.0}, "`dropout` must be in"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)
