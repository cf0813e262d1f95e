"""What transformers' common model tests (`ModelTesterMixin`, `GenerationTesterMixin`) check of every in-tree causal LM,
written out for `DalleForImageGeneration`. These are our own checks rather than transformers' mixins run against the
model: the source distribution of transformers ships `tests/test_modeling_common.py`, but not the
`tests/generation/` and `tests/exporters/` modules it imports, so it cannot be imported from the sdist (and
`parameterized`, which it needs, is no dependency of ours). Eager attention vs SDPA, `output_attentions`, resizing the
vocabulary, continuing from a returned cache, saving and loading, gradient checkpointing and compilation are tested in
test_modeling_dalle.py."""

import pytest
import torch
from test_modeling_dalle import GRID, STREAM_LENGTH, TEXT_LENGTH, TEXT_VOCAB, random_stream, tiny_model
from torch import nn
from transformers import DynamicCache


LAYERS, HEADS, HIDDEN = 3, 2, 32


@pytest.fixture
def model():
    return tiny_model(num_hidden_layers=LAYERS, attention_types=["row", "column", "conv"], attn_implementation="eager")


def test_tuple_outputs_equal_the_dict_outputs(model):
    stream = random_stream()
    with torch.no_grad():
        as_dict = model(stream, labels=stream, output_hidden_states=True, output_attentions=True)
        as_tuple = model(stream, labels=stream, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert len(as_tuple) == len(as_dict.to_tuple())
    for got, expected in zip(as_tuple, as_dict.to_tuple()):
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected)
        elif isinstance(expected, tuple):
            assert all(torch.equal(a, b) for a, b in zip(got, expected))
        else:  # the cache each call filled
            assert type(got) is type(expected) and torch.equal(got.layers[0].keys, expected.layers[0].keys)


def test_hidden_states_are_the_embeddings_then_each_layer(model):
    stream = random_stream()
    with torch.no_grad():
        out = model(stream, output_hidden_states=True)
        embeddings = model.model.embeddings(stream, torch.arange(STREAM_LENGTH))
    assert len(out.hidden_states) == LAYERS + 1
    assert all(h.shape == (2, STREAM_LENGTH, HIDDEN) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[0], embeddings)
    # The config's default, as for every transformers model.
    model.config.output_hidden_states = True
    with torch.no_grad():
        assert len(model(stream).hidden_states) == LAYERS + 1


def test_gradients_reach_hidden_states_and_attentions(model):
    model.train()
    stream = random_stream()
    out = model(stream, output_hidden_states=True, output_attentions=True)
    out.hidden_states[0].retain_grad()
    out.attentions[0].retain_grad()
    out.logits[..., TEXT_VOCAB:].float().sum().backward()
    assert out.hidden_states[0].grad is not None and out.hidden_states[0].grad.abs().sum() > 0
    assert out.attentions[0].grad is not None and out.attentions[0].grad.abs().sum() > 0


def test_input_and_output_embeddings_can_be_replaced(model):
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    assert model.get_input_embeddings() is model.model.embeddings.token_embedding
    assert model.get_output_embeddings() is model.lm_head
    replacement = nn.Embedding(model.config.vocab_size, HIDDEN)
    model.set_input_embeddings(replacement)
    assert model.model.embeddings.token_embedding is replacement


@pytest.mark.parametrize("do_sample", [False, True])
def test_generate_dict_outputs_have_one_entry_per_step(model, do_sample):
    prompt = random_stream()[:, : TEXT_LENGTH + 2]
    new = 5
    torch.manual_seed(0)
    out = model.generate(
        prompt,
        do_sample=do_sample,
        max_new_tokens=new,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        output_attentions=True,
        output_hidden_states=True,
    )
    assert out.sequences.shape == (2, prompt.shape[1] + new)
    assert len(out.scores) == len(out.logits) == len(out.attentions) == len(out.hidden_states) == new
    assert all(s.shape == (2, model.config.vocab_size) for s in out.scores)
    for step, (attentions, hidden_states) in enumerate(zip(out.attentions, out.hidden_states)):
        length = prompt.shape[1] if step == 0 else 1
        assert len(attentions) == LAYERS and len(hidden_states) == LAYERS + 1
        assert attentions[0].shape == (2, HEADS, length, prompt.shape[1] + step)
        assert hidden_states[0].shape == (2, length, HIDDEN)
    # Greedy picks the argmax of each step's scores.
    if not do_sample:
        assert torch.equal(torch.stack(out.scores, 1).argmax(-1), out.sequences[:, prompt.shape[1] :])
    assert out.cache.get_seq_length() == prompt.shape[1] + new - 1


def test_beam_search_and_several_sequences_per_prompt(model):
    prompt = random_stream()[:, :TEXT_LENGTH]
    beams = model.generate(prompt, num_beams=2, num_return_sequences=2, max_new_tokens=GRID, do_sample=False)
    assert beams.shape == (4, TEXT_LENGTH + GRID)
    assert torch.equal(beams[:, :TEXT_LENGTH], prompt.repeat_interleave(2, dim=0))
    assert (beams[:, TEXT_LENGTH:] >= TEXT_VOCAB).all()  # image positions hold image codes
    torch.manual_seed(0)
    sampled = model.generate(prompt, do_sample=True, num_return_sequences=3, max_new_tokens=GRID)
    assert sampled.shape == (6, TEXT_LENGTH + GRID)


def test_resized_embeddings_survive_post_init(model):
    # transformers marks resized modules `_is_hf_initialized`: a later `post_init()` (or `init_weights()`) keeps them.
    model.resize_token_embeddings(model.config.vocab_size + 5, mean_resizing=False)
    resized = {name: p.clone() for name, p in model.named_parameters()}
    model.post_init()
    for name, p in model.named_parameters():
        assert torch.equal(p, resized[name]), name


def test_resize_token_embeddings_rejects_a_fractional_multiple(model):
    for multiple in (1.3, 0):
        with pytest.raises(ValueError, match=f"`pad_to_multiple_of` must be a positive integer, got {multiple}"):
            model.resize_token_embeddings(model.config.vocab_size, pad_to_multiple_of=multiple)
    assert model.config.text_vocab_size == TEXT_VOCAB
    model.resize_token_embeddings(pad_to_multiple_of=64)
    assert model.config.vocab_size == 128 and model.lm_head.out_features == 128


def test_the_old_cache_name_warns_and_still_works(model):
    prompt = random_stream()[:, : TEXT_LENGTH + 2]
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
        out = model(prompt, past_key_values=cache)
    assert out.cache is cache and cache.get_seq_length() == prompt.shape[1]
    with torch.no_grad(), pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        model.model(prompt, past_key_values=DynamicCache(config=model.config))
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        generated = model.generate(prompt, past_key_values=DynamicCache(), do_sample=False, max_new_tokens=2)
    assert torch.equal(generated, model.generate(prompt, do_sample=False, max_new_tokens=2))
    with pytest.raises(ValueError, match="Both `past_key_values` and `cache` are set"):
        model(prompt, cache=DynamicCache(), past_key_values=DynamicCache())
