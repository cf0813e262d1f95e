import logging

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch.overrides import TorchFunctionMode
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, CompileConfig, DynamicCache, StaticCache

from hf_dalle import DalleConfig, DalleForImageGeneration, DalleModel, DalleStreamLogitsProcessor
from hf_dalle.models.dalle import DallePrefixCache
from hf_dalle.models.dalle.cache_dalle import PrefixLayer
from hf_dalle.models.dalle.configuration_dalle import ATTENTION_TYPES
from hf_dalle.models.dalle.gradient_scaling_dalle import DalleResblockGradientScaler
from hf_dalle.models.dalle.masking_dalle import (
    IMAGE_ATTENTION_RULES,
    build_attention_masks,
    build_flex_block_mask,
    decode_step_keys,
)
from hf_dalle.models.dalle.modeling_dalle import eager_attention_forward


TEXT_VOCAB, IMAGE_VOCAB, TEXT_LENGTH, GRID = 48, 24, 8, 4
STREAM_LENGTH = TEXT_LENGTH + GRID * GRID


def tiny_config(**kwargs) -> DalleConfig:
    defaults = {
        "text_vocab_size": TEXT_VOCAB,
        "image_vocab_size": IMAGE_VOCAB,
        "max_text_length": TEXT_LENGTH,
        "image_grid_size": GRID,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "conv_kernel_size": 3,
    }
    return DalleConfig(**{**defaults, **kwargs})


def tiny_model(seed: int = 0, **kwargs) -> DalleForImageGeneration:
    torch.manual_seed(seed)
    return DalleForImageGeneration(tiny_config(**kwargs)).eval()


def random_stream(batch: int = 2, caption_length: int = 5, seed: int = 0) -> torch.LongTensor:
    """Captions of `caption_length` non-pad tokens, padded with id 0, then a full grid of offset image codes."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, TEXT_VOCAB, (batch, caption_length), generator=g)
    text = F.pad(text, (0, TEXT_LENGTH - caption_length), value=0)
    codes = torch.randint(0, IMAGE_VOCAB, (batch, GRID * GRID), generator=g)
    return torch.cat([text, codes + TEXT_VOCAB], dim=1)


def reference_visibility(kind: str, kernel_size: int = 3) -> torch.Tensor:
    """The attention pattern written out position by position on the 2D grid, independently of the model code."""
    visible = torch.zeros(STREAM_LENGTH, STREAM_LENGTH, dtype=torch.bool)
    half = kernel_size // 2
    for q in range(STREAM_LENGTH):
        for k in range(STREAM_LENGTH):
            if q < TEXT_LENGTH or k < TEXT_LENGTH:  # text is causal, and image codes see all text
                visible[q, k] = k <= q
                continue
            i, j = q - TEXT_LENGTH, k - TEXT_LENGTH
            (qr, qc), (_kr, kc) = divmod(i, GRID), divmod(j, GRID)
            if j > i:
                continue
            if kind == "full":
                visible[q, k] = True
            elif kind == "row":  # itself and the GRID codes before it in raster order
                visible[q, k] = i - j <= GRID
            elif kind == "column":
                visible[q, k] = kc == qc
            elif kind == "conv":  # kernel offsets (dr, dc) over the raster order, wrapping onto neighbouring rows
                visible[q, k] = any(
                    (qr - dr) * GRID + (qc + dc) == j for dr in range(half + 1) for dc in range(-half, half + 1)
                )
    return visible


def test_default_config_is_the_paper_12b_model():
    config = DalleConfig()
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (64, 3968, 62)
    assert config.hidden_size // config.num_attention_heads == 64
    assert (config.text_vocab_size, config.max_text_length, config.image_vocab_size) == (16384, 256, 8192)
    assert config.image_grid_size == 32 and config.conv_kernel_size == 11 and config.text_loss_weight == 1 / 8
    assert config.attention_types[:6] == ["row", "column", "row", "row", "row", "column"]
    assert config.attention_types[-1] == "conv" and config.attention_types.count("conv") == 1
    assert config.attention_types.count("column") == 16
    with torch.device("meta"):
        model = DalleForImageGeneration(config)
    num_parameters = sum(p.numel() for p in model.parameters())
    assert abs(num_parameters - 12.0e9) < 0.3e9, num_parameters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attention_types": ["row", "conv"]}, "one attention type per layer \\(3\\), got 2"),
        ({"attention_types": ["row", "diagonal", "conv"]}, "Unknown `attention_types` \\['diagonal'\\]"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of `num_attention_heads`"),
        ({"conv_kernel_size": 4}, "`conv_kernel_size` must be odd"),
        ({"text_loss_weight": 1.5}, "`text_loss_weight` must be in \\[0, 1\\]"),
        ({"text_pad_token_id": TEXT_VOCAB}, "`text_pad_token_id` must be a text token id"),
        ({"image_grid_size": 0}, "`image_grid_size` must be a positive integer"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(**kwargs)


@pytest.mark.parametrize("kind", ["full", "row", "column", "conv"])
def test_attention_masks_match_the_definition(kind):
    masks = build_attention_masks(tiny_config(attention_types=[kind] * 3))
    assert torch.equal(masks[kind], reference_visibility(kind))


def test_conv_mask_wraps_around_and_matches_paper_sizes():
    visible = reference_visibility("conv")
    first_code_of_row_1 = TEXT_LENGTH + GRID
    # Its left neighbour in the kernel is the last code of row 0 (wraparound); one step up is its own column.
    assert visible[first_code_of_row_1, first_code_of_row_1 - 1]
    assert visible[first_code_of_row_1, first_code_of_row_1 - GRID]
    # The paper's model: an 11x11 causal kernel holds 5 full rows of 11 and 6 codes of its own row.
    masks = build_attention_masks(DalleConfig(num_hidden_layers=4, attention_types=["full", "row", "column", "conv"]))
    middle = 256 + 16 * 32 + 16
    assert masks["conv"][middle, 256:].sum() == 5 * 11 + 6
    assert masks["row"][middle, 256:].sum() == 33
    assert masks["column"][middle, 256:].sum() == 17
    assert masks["conv"][middle, :256].all()


@pytest.mark.parametrize("kind", ["full", "row", "column", "conv"])
def test_one_layer_model_sees_exactly_the_masked_tokens(kind):
    model = tiny_model(num_hidden_layers=1, attention_types=[kind])
    stream = random_stream(batch=1, caption_length=TEXT_LENGTH)
    visible = reference_visibility(kind)
    with torch.no_grad():
        logits = model(stream).logits
        for k in range(STREAM_LENGTH - 1):
            changed = stream.clone()
            vocab_start, vocab_size = (0, TEXT_VOCAB) if k < TEXT_LENGTH else (TEXT_VOCAB, IMAGE_VOCAB)
            changed[0, k] = vocab_start + (stream[0, k] - vocab_start + 7) % vocab_size
            new_logits = model(changed).logits
            for q in range(k + 1, STREAM_LENGTH):
                difference = (new_logits[0, q] - logits[0, q]).abs().max()
                if visible[q, k]:
                    assert difference > 1e-4, f"{kind}: position {q} should see position {k}"
                else:
                    assert difference == 0, f"{kind}: position {q} must not see position {k}"


def test_deep_model_is_causal():
    model = tiny_model(num_hidden_layers=4, attention_types=["row", "column", "full", "conv"])
    stream = random_stream(batch=1)
    with torch.no_grad():
        logits = model(stream).logits
        for k in (3, TEXT_LENGTH - 1, TEXT_LENGTH + 5, STREAM_LENGTH - 2):
            changed = stream.clone()
            changed[0, k] = stream[0, k] + (1 if k < TEXT_LENGTH else -1)
            new_logits = model(changed).logits
            torch.testing.assert_close(new_logits[0, :k], logits[0, :k], rtol=0, atol=0)
            assert not torch.equal(new_logits[0, k], logits[0, k])


def test_logits_only_allow_the_token_kind_of_the_next_position():
    model = tiny_model()
    with torch.no_grad():
        logits = model(random_stream()).logits
    next_is_image = torch.arange(STREAM_LENGTH) >= TEXT_LENGTH - 1
    text_logits, image_logits = logits[..., :TEXT_VOCAB], logits[..., TEXT_VOCAB:]
    lowest = torch.finfo(logits.dtype).min
    assert (text_logits[:, next_is_image] == lowest).all()
    assert (image_logits[:, next_is_image] > lowest / 2).all()
    assert (image_logits[:, ~next_is_image] == lowest).all()
    assert (text_logits[:, ~next_is_image] > lowest / 2).all()
    # The processor for outside scores applies the same rule.
    processor = DalleStreamLogitsProcessor(model.config)
    for length in (3, TEXT_LENGTH, TEXT_LENGTH + 4):
        scores = processor(torch.zeros(2, length, dtype=torch.long), torch.zeros(2, model.config.vocab_size))
        assert torch.equal(scores == lowest, logits[:, length - 1] == lowest)


def test_sampled_images_hold_only_image_codes():
    model = tiny_model()
    text = random_stream(batch=4)[:, :TEXT_LENGTH]
    torch.manual_seed(0)
    stream = model.generate(text, do_sample=True, temperature=3.0, max_new_tokens=GRID * GRID)
    codes = model.image_codes_from_ids(stream)
    assert codes.shape == (4, GRID, GRID)
    assert codes.min() >= 0 and codes.max() < IMAGE_VOCAB
    assert len(codes.unique()) > 5  # hot sampling really draws from the image vocabulary
    # Classifier-free guidance in `generate` subtracts unconditional logits: masked entries must stay finite.
    unconditional = torch.zeros_like(text)
    guided = model.generate(
        text, do_sample=True, guidance_scale=3.0, negative_prompt_ids=unconditional, max_new_tokens=GRID * GRID
    )
    assert model.image_codes_from_ids(guided).shape == (4, GRID, GRID)


def manual_greedy(model, prompt, num_new_tokens, cache):
    """A hand-written decode loop: prefill, then one token per call."""
    with torch.no_grad():
        out = model(input_ids=prompt, cache=cache, use_cache=True)
        tokens = [prompt]
        for _ in range(num_new_tokens):
            next_token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(next_token)
            out = model(input_ids=next_token, cache=out.cache, use_cache=True)
    return torch.cat(tokens, dim=1)


@pytest.mark.parametrize("prompt_length", [TEXT_LENGTH - 3, TEXT_LENGTH, TEXT_LENGTH + 5])
def test_greedy_generation_is_the_same_with_and_without_cache(prompt_length):
    model = tiny_model(num_hidden_layers=3, attention_types=["row", "column", "conv"])
    prompt = random_stream(batch=3)[:, :prompt_length]
    new = STREAM_LENGTH - prompt_length
    without_cache = model.generate(prompt, do_sample=False, max_new_tokens=new, use_cache=False)
    prefix = model.generate(prompt, do_sample=False, max_new_tokens=new)  # the default: a DallePrefixCache
    dynamic = model.generate(prompt, do_sample=False, max_new_tokens=new, cache=DynamicCache())
    static = model.generate(prompt, do_sample=False, max_new_tokens=new, cache_implementation="static")
    assert without_cache.shape == (3, STREAM_LENGTH)
    assert torch.equal(prefix, without_cache)
    assert torch.equal(dynamic, without_cache)
    assert torch.equal(static, without_cache)
    assert torch.equal(manual_greedy(model, prompt, new, DynamicCache(config=model.config)), without_cache)
    assert torch.equal(manual_greedy(model, prompt, new, DallePrefixCache(model.config)), without_cache)
    # A StaticCache longer than the stream: the extra slots stay hidden.
    long_cache = StaticCache(config=model.config, max_cache_len=STREAM_LENGTH + 7)
    assert torch.equal(manual_greedy(model, prompt, new, long_cache), without_cache)
    # Uncached greedy, one full forward per token, as the ground truth of the three above.
    stream = prompt
    with torch.no_grad():
        while stream.shape[1] < STREAM_LENGTH:
            stream = torch.cat([stream, model(stream, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(stream, without_cache)


def test_generate_defaults_to_a_prefix_cache_and_keeps_the_callers():
    model, prompt = tiny_model(), random_stream(batch=2)[:, :TEXT_LENGTH]
    new = STREAM_LENGTH - TEXT_LENGTH
    runs = {}
    for name, kwargs in [("default", {}), ("dynamic", {"cache": DynamicCache()})]:
        torch.manual_seed(3)
        runs[name] = model.generate(
            prompt, do_sample=True, top_k=5, max_new_tokens=new, return_dict_in_generate=True, **kwargs
        )
    caches = {name: run.cache for name, run in runs.items()}
    assert type(caches["default"]) is DallePrefixCache
    assert type(caches["dynamic"]) is DynamicCache
    assert torch.equal(runs["default"].sequences, runs["dynamic"].sequences)
    # It holds the stream but its last token (never fed back), as the dynamic cache does.
    assert caches["default"].get_seq_length() == STREAM_LENGTH - 1
    for layer, dynamic_layer in zip(caches["default"].layers, caches["dynamic"].layers):
        torch.testing.assert_close(layer.keys[:, :, : layer.length], dynamic_layer.keys)
    # Modes that reorder the cache keep generate's own.
    beams = model.generate(prompt, num_beams=2, max_new_tokens=3, return_dict_in_generate=True)
    assert type(beams.cache) is DynamicCache


def test_prefix_layer_returns_the_filled_prefix_and_crops():
    layer = PrefixLayer(max_cache_len=6)
    keys, values = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    k, v = layer.update(keys[:, :, :3], values[:, :, :3])
    assert k.shape == (2, 3, 3, 5) and layer.get_mask_sizes(1) == (4, 0)
    k, v = layer.update(keys[:, :, 3:], values[:, :, 3:])
    assert torch.equal(k, keys) and torch.equal(v, values) and layer.get_seq_length() == 4
    assert k.data_ptr() == layer.keys.data_ptr()  # a view of the buffer, not a copy
    layer.crop(-2)
    k, _ = layer.update(values[:, :, :1], values[:, :, :1])
    assert torch.equal(k, torch.cat([keys[:, :, :2], values[:, :, :1]], dim=2))
    with pytest.raises(ValueError, match="holds 6 positions; this update would fill 7"):
        layer.update(keys, values)
    layer.reset()
    assert layer.get_seq_length() == 0 and not layer.keys.any()


@pytest.mark.parametrize("text_length, grid, kernel", [(TEXT_LENGTH, GRID, 3), (2, 6, 3), (3, 5, 5), (1, 7, 7)])
def test_decode_step_keys_select_exactly_the_masked_keys(text_length, grid, kernel):
    config = tiny_config(
        max_text_length=text_length,
        image_grid_size=grid,
        conv_kernel_size=kernel,
        num_hidden_layers=4,
        attention_types=["full", "row", "column", "conv"],
    )
    for kind, mask in build_attention_masks(config).items():
        for position in range(text_length, config.max_sequence_length):
            keys = decode_step_keys(config, position, mask[position])
            image_keys = torch.arange(config.max_sequence_length)[keys.image_keys]
            if keys.image_mask is not None:
                image_keys = image_keys[keys.image_mask]
            selected = torch.cat([torch.arange(keys.text_length), image_keys])
            assert torch.equal(selected, mask[position].nonzero().squeeze(1)), (kind, position)


def test_sparse_decode_steps_give_the_logits_of_one_pass():
    # A 2-token caption before a 6x6 grid: late in the stream, row, column and conv attention allow under a third
    # of the prefix, so decode steps attend through `decode_step_attention_forward`; full attention keeps its mask.
    types = ["row", "column", "conv", "full"]
    model = tiny_model(max_text_length=2, image_grid_size=6, num_hidden_layers=4, attention_types=types)
    stream_length = model.config.max_sequence_length
    sparse = model.model.attention_masks.decode_steps(torch.device("cpu"))[stream_length - 1]
    assert [sparse[kind] is not None for kind in types] == [True, True, True, False]
    g = torch.Generator().manual_seed(0)
    stream = torch.cat(
        [
            torch.randint(1, TEXT_VOCAB, (3, 2), generator=g),
            torch.randint(TEXT_VOCAB, TEXT_VOCAB + IMAGE_VOCAB, (3, 36), generator=g),
        ],
        dim=1,
    )
    with torch.no_grad():
        full = model(stream, use_cache=False).logits
        for cache in (DallePrefixCache(model.config), DynamicCache(config=model.config)):
            steps = [model(stream[:, i : i + 1], cache=cache).logits for i in range(stream_length)]
            torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    prompt = stream[:, :2]
    greedy = model.generate(prompt, do_sample=False, max_new_tokens=36)
    assert torch.equal(greedy, model.generate(prompt, do_sample=False, max_new_tokens=36, use_cache=False))


class HostReads(TorchFunctionMode):
    """Records the tensor calls that read values back to the host, which wait for the device to finish its queue."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make_cache", [DallePrefixCache, lambda config: DynamicCache(config=config)])
def test_decode_steps_never_wait_for_the_device(make_cache):
    # The layout is checked where ids enter the stream, not at every step (the step's id comes from the model's masked
    # logits), and the sparse decode steps' keys are built for every position at the first step.
    types = ["row", "column", "conv", "full"]
    model = tiny_model(max_text_length=2, image_grid_size=6, num_hidden_layers=4, attention_types=types)
    stream = model.prepare_input_ids(torch.tensor([[5, 7]]), torch.randint(0, IMAGE_VOCAB, (1, 36)))
    cache = make_cache(model.config)
    with torch.no_grad():
        model(stream[:, :3], cache=cache)
        model(stream[:, 3:4], cache=cache)
        with HostReads() as reads:
            for position in range(4, stream.shape[1]):
                model(stream[:, position : position + 1], cache=cache)
    assert reads.calls == []
    with HostReads() as reads, torch.no_grad():  # a prefill still checks its ids: the reads are seen
        model(stream)
    assert reads.calls


def test_cached_chunks_give_the_logits_of_one_pass():
    model = tiny_model()
    stream = random_stream()
    with torch.no_grad():
        full = model(stream, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        chunks = [model(chunk, cache=cache).logits for chunk in stream.split([5, 6, 1, 12], dim=1)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)


def test_loss_weights_text_and_image_terms_like_a_hand_computation():
    model = tiny_model(text_loss_weight=0.25)
    stream = random_stream(batch=2)
    labels = stream.clone()
    labels[0, 2] = labels[1, TEXT_LENGTH + 3] = -100
    out = model(stream, labels=labels)
    with torch.no_grad():
        hidden = model.model(stream).last_hidden_state
        raw = model.lm_head(hidden)  # unmasked logits: the hand computation restricts the vocabulary itself
    text_terms, image_terms = [], []
    for b in range(2):
        for t in range(1, STREAM_LENGTH):
            label = labels[b, t].item()
            if label == -100:
                continue
            if t < TEXT_LENGTH:
                text_terms.append(-F.log_softmax(raw[b, t - 1, :TEXT_VOCAB], -1)[label])
            else:
                image_terms.append(-F.log_softmax(raw[b, t - 1, TEXT_VOCAB:], -1)[label - TEXT_VOCAB])
    assert len(text_terms) == 2 * (TEXT_LENGTH - 1) - 1 and len(image_terms) == 2 * GRID * GRID - 1
    text_loss, image_loss = torch.stack(text_terms).mean(), torch.stack(image_terms).mean()
    torch.testing.assert_close(out.text_loss, text_loss)
    torch.testing.assert_close(out.image_loss, image_loss)
    torch.testing.assert_close(out.loss, 0.25 * text_loss + 0.75 * image_loss)
    out.loss.backward()
    assert model.model.embeddings.text_pad_embedding.weight.grad[5:].abs().sum() > 0  # pads are trained inputs


def test_pad_embedding_is_learned_per_position():
    model = tiny_model()
    embeddings = model.model.embeddings
    positions = torch.arange(STREAM_LENGTH)
    stream = random_stream(batch=1, caption_length=3)
    with torch.no_grad():
        embedded = embeddings(stream, positions)[0]
        pads = embeddings.text_pad_embedding.weight
        torch.testing.assert_close(embedded[3:TEXT_LENGTH], pads[3:TEXT_LENGTH])
        assert not torch.allclose(embedded[3], embedded[4])
        # Text token 0 is the pad: a caption padded at position 3 differs from one padded from position 5 on,
        # at every later position.
        other = stream.clone()
        other[0, 3:5] = torch.tensor([11, 12])
        logits, other_logits = model(stream).logits, model(other).logits
    assert not torch.allclose(logits[0, TEXT_LENGTH:], other_logits[0, TEXT_LENGTH:])


def test_save_load_and_auto_classes_round_trip(tmp_path):
    model = tiny_model()
    stream = random_stream()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DalleConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is DalleForImageGeneration
    assert loaded.config.attention_types == model.config.attention_types
    with torch.no_grad():
        assert torch.equal(loaded(stream).logits, model(stream).logits)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is DalleModel
        assert torch.equal(base(stream).last_hidden_state, model.model(stream).last_hidden_state)


def test_tied_embeddings_share_the_matrix(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embeddings.token_embedding.weight
    model.save_pretrained(tmp_path)
    loaded = DalleForImageGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embeddings.token_embedding.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_gradient_checkpointing_gives_the_same_gradients():
    stream = random_stream()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=1).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(stream, labels=stream, use_cache=False).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_bf16_autocast_is_close_to_float32():
    model = tiny_model()
    stream = random_stream()
    with torch.no_grad():
        loss = model(stream, labels=stream).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(stream, labels=stream)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss) and abs(out.loss.item() - loss.item()) < 0.05


@pytest.mark.parametrize("kind", ["full", "row", "column", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_attention_matches_sdpa_with_gradients(kind, dtype):
    mask = build_attention_masks(tiny_config(attention_types=[kind] * 3))[kind]
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 2, STREAM_LENGTH, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]
    outputs, grads = [], []

    def eager(query, key, value, mask):
        output, weights = eager_attention_forward(torch.nn.Module(), query, key, value, mask, scaling=8**-0.5)
        assert weights.shape == (2, 2, STREAM_LENGTH, STREAM_LENGTH)
        return output.transpose(1, 2)

    for attend in (F.scaled_dot_product_attention, eager):
        output = attend(*inputs, mask)
        (output.float() * torch.linspace(-1, 1, 8)).sum().backward()
        outputs.append(output.float())
        grads.append([x.grad.float() for x in inputs])
        for x in inputs:
            x.grad = None
    tolerance = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(outputs[1], outputs[0], **tolerance)
    for got, expected in zip(*grads[::-1]):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("dtype,uses_sdpa", [(torch.float32, True), (torch.bfloat16, False)])
def test_cpu_training_in_half_precision_bypasses_sdpa(monkeypatch, dtype, uses_sdpa):
    # The CPU flash kernel SDPA picks is several times slower backward in bf16; inference keeps SDPA.
    calls = {"train": 0, "eval": 0}
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls[mode] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    model, stream = tiny_model(), random_stream()
    losses = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            losses[mode] = model(stream, labels=stream).loss.item()
    assert calls == {"train": 3 if uses_sdpa else 0, "eval": 3}
    assert abs(losses["train"] - losses["eval"]) < (1e-5 if uses_sdpa else 0.02)


def test_each_attention_type_has_one_rule():
    assert set(IMAGE_ATTENTION_RULES) == set(ATTENTION_TYPES)


def counting_sdpa(monkeypatch) -> dict:
    """Count the calls of `F.scaled_dot_product_attention` (transformers' "sdpa" function calls it too)."""
    calls = {"sdpa": 0}
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    return calls


def test_eager_attention_runs_eager_and_matches_sdpa(monkeypatch):
    calls = counting_sdpa(monkeypatch)
    types = ["row", "column", "full", "conv"]
    models = {
        impl: tiny_model(num_hidden_layers=4, attention_types=types, attn_implementation=impl)
        for impl in ("eager", "sdpa")
    }
    assert models["eager"].config._attn_implementation == "eager"
    stream, prompt = random_stream(), random_stream()[:, : TEXT_LENGTH + 2]
    logits, streams = {}, {}
    with torch.no_grad():
        for impl, model in models.items():
            calls["sdpa"] = 0
            logits[impl] = model(stream).logits
            assert calls["sdpa"] == (0 if impl == "eager" else 4), impl
            streams[impl] = model.generate(prompt, do_sample=False, max_new_tokens=STREAM_LENGTH - prompt.shape[1])
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-5, atol=1e-5)
    assert torch.equal(streams["eager"], streams["sdpa"])
    # Switching an existing model goes through transformers' own check.
    models["sdpa"].set_attn_implementation("eager")
    calls["sdpa"] = 0
    with torch.no_grad():
        torch.testing.assert_close(models["sdpa"](stream).logits, logits["eager"], rtol=1e-5, atol=1e-5)
    assert calls["sdpa"] == 0


def test_output_attentions_returns_the_masked_softmax_weights(caplog):
    types = ["full", "row", "column", "conv"]
    model = tiny_model(num_hidden_layers=4, attention_types=types, attn_implementation="eager")
    stream = random_stream()
    with torch.no_grad():
        out = model(stream, output_attentions=True)
    assert len(out.attentions) == 4
    for kind, weights in zip(types, out.attentions):
        visible = reference_visibility(kind)
        assert weights.shape == (2, 2, STREAM_LENGTH, STREAM_LENGTH)
        assert (weights[:, :, ~visible] == 0).all() and (weights[:, :, visible] > 0).all(), kind
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, STREAM_LENGTH))
    # The config's default, as transformers models read it.
    model.config.output_attentions = True
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(stream).attentions, out.attentions))
    model.config.output_attentions = False

    # Through `generate`: the prompt's weights, then one row per step (the sparse decode steps are not used here).
    prompt = stream[:, : TEXT_LENGTH + 2]
    new = STREAM_LENGTH - prompt.shape[1]
    generated = model.generate(
        prompt, do_sample=False, max_new_tokens=new, return_dict_in_generate=True, output_attentions=True
    )
    assert len(generated.attentions) == new and len(generated.attentions[0]) == 4
    assert generated.attentions[0][0].shape == (2, 2, prompt.shape[1], prompt.shape[1])
    with torch.no_grad():
        full = model(generated.sequences[:, :-1], output_attentions=True).attentions
    for step, step_weights in enumerate(generated.attentions[1:]):
        position = prompt.shape[1] + step
        for layer_weights, full_weights in zip(step_weights, full):
            assert layer_weights.shape == (2, 2, 1, position + 1)
            torch.testing.assert_close(layer_weights[:, :, 0], full_weights[:, :, position, : position + 1])

    # Other implementations warn and return no weights, as transformers' own models do.
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        out = tiny_model()(stream, output_attentions=True)
    assert out.attentions == ()
    assert "`output_attentions=True` needs the eager attention implementation; 'sdpa' returns no" in caplog.text


def test_flex_block_masks_are_the_dense_masks():
    from torch.nn.attention.flex_attention import create_mask

    config = tiny_config(num_hidden_layers=4, attention_types=["full", "row", "column", "conv"])
    for kind, mask in build_attention_masks(config).items():
        for start, length, key_length in [(0, STREAM_LENGTH, STREAM_LENGTH), (TEXT_LENGTH + 3, 5, STREAM_LENGTH + 4)]:
            positions = torch.arange(start, start + length)
            block_mask = build_flex_block_mask(config, kind, positions, key_length)
            dense = create_mask(block_mask.mask_mod, None, None, length, key_length, device="cpu")[0, 0]
            assert torch.equal(dense[:, :STREAM_LENGTH], mask[start : start + length]), (kind, start)
            assert not dense[:, STREAM_LENGTH:].any()


FLEX_SHAPES = {  # streams of 24, 31 and 41 positions: never whole blocks of the CPU kernel
    "grid4": {},
    "grid5_clipped": {"max_text_length": 6, "image_grid_size": 5, "conv_window": "clipped"},
    "grid5_offset_torus": {
        "max_text_length": 16,
        "image_grid_size": 5,
        "conv_kernel_size": 5,
        "conv_window": "torus",
        "image_mask_offset": 1,
    },
}


@pytest.mark.parametrize("shape", FLEX_SHAPES)
def test_flex_attention_matches_sdpa(shape):
    """Full streams, cached chunks and one-token decode steps under flex attention on a CPU, each compiled from a
    fresh compiler state (torch 2.13's CPU kernel gave NaN or wrong values at lengths that are not whole blocks,
    depending on what it had compiled before: the first shape here failed in a fresh process), against sdpa."""
    torch.compiler.reset()  # as a fresh process: the kernel's failures depended on what was compiled earlier
    kwargs = {"attention_types": ["row", "column", "conv"], **FLEX_SHAPES[shape]}
    models = {impl: tiny_model(attn_implementation=impl, **kwargs) for impl in ("flex_attention", "sdpa")}
    config = models["sdpa"].config
    generator = torch.Generator().manual_seed(1)
    text = F.pad(torch.randint(1, TEXT_VOCAB, (2, 5), generator=generator), (0, config.max_text_length - 5))
    codes = torch.randint(0, IMAGE_VOCAB, (2, config.image_grid_size**2), generator=generator)
    stream = torch.cat([text, codes + TEXT_VOCAB], dim=1)
    flex = models["flex_attention"]
    with torch.no_grad():
        expected = models["sdpa"](stream, use_cache=False).logits
        for _ in range(2):  # the same call twice: a kernel reading uninitialised memory would not repeat itself
            logits = flex(stream, use_cache=False).logits
            assert not logits.isnan().any()
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        for split in (config.max_text_length - 1, config.max_text_length + 3):
            cache = DynamicCache(config=config)
            prefill, rest = stream[:, :split], stream[:, split:]
            chunks = [flex(prefill, cache=cache).logits]
            chunks += [flex(token, cache=cache).logits for token in rest[:, :4].split(1, dim=1)]  # decode steps
            chunks.append(flex(rest[:, 4:], cache=cache).logits)
            logits = torch.cat(chunks, dim=1)
            assert not logits.isnan().any()
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_decode_step_traces_as_one_graph_with_a_static_cache():
    # Dynamo capture without a graph break (the inductor run is in the slow test below).
    model = tiny_model()
    prompt = random_stream(batch=2)[:, :TEXT_LENGTH]
    expected = model.generate(prompt, do_sample=False, max_new_tokens=6)
    step = torch.compile(model.forward, fullgraph=True, backend="eager")
    assert torch.equal(compiled_greedy(model, step, prompt, 6), expected)


@pytest.mark.slow
def test_compiled_decode_step_with_static_cache():
    model = tiny_model()
    prompt = random_stream(batch=2)[:, :TEXT_LENGTH]
    expected = model.generate(prompt, do_sample=False, max_new_tokens=GRID * GRID)
    step = torch.compile(model.forward, fullgraph=True)
    assert torch.equal(compiled_greedy(model, step, prompt, GRID * GRID), expected)
    # `generate` compiles the decode step itself when asked to (on CPU only with an explicit CompileConfig).
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True
    compiled = model.generate(
        prompt,
        do_sample=False,
        max_new_tokens=GRID * GRID,
        cache_implementation="static",
        compile_config=compile_config,
    )
    assert torch.equal(compiled, expected)


def compiled_greedy(model, step, prompt, num_new_tokens):
    cache = StaticCache(config=model.config, max_cache_len=STREAM_LENGTH)
    with torch.no_grad():
        next_token = model(prompt, cache=cache).logits[:, -1:].argmax(-1)
        tokens = [prompt, next_token]
        for _ in range(num_new_tokens - 1):
            next_token = step(input_ids=next_token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            tokens.append(next_token)
    return torch.cat(tokens, dim=1)


def test_prepare_input_ids_and_image_codes_round_trip():
    model = tiny_model()
    caption = torch.tensor([[4, 9, 13]])
    codes = torch.randint(0, IMAGE_VOCAB, (1, GRID, GRID))
    stream = model.prepare_input_ids(caption, codes)
    assert stream.shape == (1, STREAM_LENGTH)
    assert stream[0, :TEXT_LENGTH].tolist() == [4, 9, 13, 0, 0, 0, 0, 0]
    assert torch.equal(stream[0, TEXT_LENGTH:], codes.flatten() + TEXT_VOCAB)
    assert torch.equal(model.image_codes_from_ids(stream), codes)
    primed = model.prepare_input_ids(caption, codes[:, :1])  # the top row primes the image
    assert primed.shape == (1, TEXT_LENGTH + GRID)


@pytest.mark.parametrize(
    "make_stream, message",
    [
        (lambda s: torch.cat([s, s[:, -1:]], dim=1), "reaches stream position 24, but a DALL-E stream holds at most"),
        (lambda s: s.index_fill(1, torch.tensor([2]), TEXT_VOCAB + 1), "image code .* at a text position"),
        (lambda s: s.index_fill(1, torch.tensor([TEXT_LENGTH + 2]), 5), "text token id .* at an image position"),
        (lambda s: s.index_fill(1, torch.tensor([TEXT_LENGTH]), TEXT_VOCAB + IMAGE_VOCAB), "ids outside \\[0, 72\\)"),
        (lambda s: s.index_fill(1, torch.tensor([0]), -3), "ids outside \\[0, 72\\)"),
        (lambda s: s.float(), "integer tensor of shape \\(batch, length\\)"),
    ],
)
def test_bad_streams_are_rejected(make_stream, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(make_stream(random_stream()))


def test_bad_calls_are_rejected():
    model = tiny_model()
    stream = random_stream()
    with pytest.raises(ValueError, match="`attention_mask` must be all ones"):
        model(stream, attention_mask=(stream != 0).long())
    with pytest.raises(ValueError, match="`labels` must have the shape of `input_ids`"):
        model(stream, labels=stream[:, :-1])
    with pytest.raises(ValueError, match="text token id .* at an image position"):
        model(stream, labels=stream.index_fill(1, torch.tensor([TEXT_LENGTH]), 3))
    with pytest.raises(ValueError, match="caption longer than max_text_length"):
        model(torch.randint(1, TEXT_VOCAB, (1, TEXT_LENGTH + 2)))
    with pytest.raises(ValueError, match="`text_input_ids` must be a tensor of shape \\(batch, <= max_text_length=8"):
        model.prepare_input_ids(torch.ones(1, TEXT_LENGTH + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="`image_codes` must lie in \\[0, 24\\)"):
        model.prepare_input_ids(torch.ones(1, 3, dtype=torch.long), torch.full((1, 4), IMAGE_VOCAB))
    with pytest.raises(ValueError, match="complete streams of shape \\(batch, 24\\)"):
        model.image_codes_from_ids(stream[:, :-1])
    with pytest.raises(ValueError, match="image code .* at a text position"):  # generate checks its prompt
        model.generate(stream.index_fill(1, torch.tensor([2]), TEXT_VOCAB + 1)[:, :TEXT_LENGTH], max_new_tokens=1)
    # A decode step past the end of the stream.
    cache = DynamicCache(config=model.config)
    model(stream, cache=cache)
    with pytest.raises(ValueError, match="reaches stream position 24"):
        model(stream[:, -1:], cache=cache)


def block_gradient_errors(model, reference) -> dict[str, float]:
    """Relative error of each transformer-block gradient of `model` against `reference`."""
    reference_grads = dict(reference.named_parameters())
    return {
        name: ((p.grad - reference_grads[name].grad).norm() / reference_grads[name].grad.norm()).item()
        for name, p in model.named_parameters()
        if name.startswith("model.layers.")
    }


def test_resblock_gradient_scaling_rescues_fp16_gradients_from_underflow():
    # A tiny gradient arriving in the float32 residual stream underflows inside the fp16 branches unless each
    # branch scales it up on the way in and down on the way out (paper, Fig. 4).
    stream, upstream = random_stream(), torch.randn(2, STREAM_LENGTH, 32) * 1e-8
    reference = tiny_model(seed=3, num_hidden_layers=6).train()
    reference.model(stream).last_hidden_state.backward(upstream)
    errors = {}
    for scaling in (False, True):
        model = tiny_model(
            seed=3, num_hidden_layers=6, resblock_gradient_scaling=scaling, resblock_gradient_scale_init=2.0**24
        ).train()
        with torch.autocast("cpu", dtype=torch.float16):
            hidden = model.model(stream).last_hidden_state
        hidden.backward(upstream)
        if scaling:
            assert model.update_resblock_gradient_scales() == 0
        errors[scaling] = block_gradient_errors(model, reference)
    assert max(errors[True].values()) < 0.01
    assert sum(errors[False].values()) / len(errors[False]) > 0.5  # fp16 alone loses most of these gradients


def test_resblock_gradient_scaling_is_exact_in_float32():
    stream = random_stream()
    reference = tiny_model(seed=4).train()
    assert not any("gradient_scaler" in name for name in reference.state_dict())  # off: identity, with no state
    reference(stream, labels=stream).loss.backward()
    model = tiny_model(seed=4, resblock_gradient_scaling=True).train()
    model.activation_checkpointing_enable()
    model(stream, labels=stream).loss.backward()
    model.update_resblock_gradient_scales()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, p.grad, msg=name)


def test_overflowing_branches_are_filtered_and_their_scales_adjusted(tmp_path):
    model = tiny_model(
        resblock_gradient_scaling=True, resblock_gradient_scale_init=2.0**40, resblock_gradient_scale_growth_interval=2
    ).train()
    stream = random_stream()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(stream, labels=stream).loss
    loss.backward()  # every branch's gradient overflows fp16 once multiplied by 2**40
    assert model.update_resblock_gradient_scales() == 2 * 3
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        if name.startswith("model.layers."):
            assert (p.grad == 0).all(), name  # the overflowed branches skip this step
    # The filter kept the residual stream clean: the embeddings still get their (identity-path) gradient.
    assert model.model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    scalers = [m for m in model.modules() if isinstance(m, DalleResblockGradientScaler)]
    assert len(scalers) == 6 and all(s.scale.item() == 2.0**39 for s in scalers)

    for _ in range(2):  # clean steps: after growth_interval of them the scales double
        model.zero_grad()
        model(stream, labels=stream).loss.backward()
        assert model.update_resblock_gradient_scales() == 0
    assert all(s.scale.item() == 2.0**40 for s in scalers)

    model.save_pretrained(tmp_path)  # the scales resume with the model
    loaded = DalleForImageGeneration.from_pretrained(tmp_path)
    assert [m.scale.item() for m in loaded.modules() if isinstance(m, DalleResblockGradientScaler)] == [2.0**40] * 6
    with pytest.raises(ValueError, match="resblock_gradient_scaling=True"):
        tiny_model().update_resblock_gradient_scales()


def test_special_token_ids_are_config_fields_that_do_not_apply():
    config = tiny_config()
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (None, None, None)
    assert {"bos_token_id", "eos_token_id", "pad_token_id"} <= set(config.to_dict())
    model = DalleForImageGeneration(config)
    assert model.generation_config.pad_token_id is None and model.generation_config.eos_token_id is None
    assert tiny_config(eos_token_id=3).eos_token_id == 3
    with pytest.raises(StrictDataclassClassValidationError, match="`pad_token_id` must be None"):
        tiny_config(pad_token_id=0)
    with pytest.raises(StrictDataclassClassValidationError, match="`bos_token_id` must be None or a token id"):
        tiny_config(bos_token_id=TEXT_VOCAB + IMAGE_VOCAB)


@pytest.mark.parametrize("tied", [False, True])
def test_resize_token_embeddings_resizes_the_text_vocabulary(tied):
    model = tiny_model(tie_word_embeddings=tied)
    stream = random_stream()
    with torch.no_grad():
        before = model(stream).logits
    added = 5
    embedding = model.resize_token_embeddings(model.config.vocab_size + added)
    config = model.config
    assert (config.text_vocab_size, config.vocab_size) == (TEXT_VOCAB + added, TEXT_VOCAB + added + IMAGE_VOCAB)
    assert embedding is model.get_input_embeddings() and embedding.weight.shape[0] == config.vocab_size
    assert model.lm_head.weight.shape[0] == config.vocab_size
    assert (model.lm_head.weight is embedding.weight) == tied
    # The same caption and codes, the codes now written with the new offset: every allowed logit is unchanged.
    moved = torch.where(stream >= TEXT_VOCAB, stream + added, stream)
    with torch.no_grad():
        after = model(moved).logits
    torch.testing.assert_close(after[..., :TEXT_VOCAB], before[..., :TEXT_VOCAB])
    torch.testing.assert_close(after[..., TEXT_VOCAB + added :], before[..., TEXT_VOCAB:])
    assert (after[:, TEXT_LENGTH - 1 :, : TEXT_VOCAB + added] == torch.finfo(after.dtype).min).all()
    # It still generates valid streams, with the old codes' greedy choices.
    prompt = moved[:, : TEXT_LENGTH + 3]
    generated = model.generate(prompt, do_sample=False, max_new_tokens=STREAM_LENGTH - prompt.shape[1])
    codes = model.image_codes_from_ids(generated)
    assert codes.min() >= 0 and codes.max() < IMAGE_VOCAB

    # Too small a vocabulary is refused before anything changes.
    with pytest.raises(ValueError, match="must keep the special ids"):
        model.resize_token_embeddings(IMAGE_VOCAB)
    assert model.config.text_vocab_size == TEXT_VOCAB + added and embedding is model.get_input_embeddings()


def test_generate_continues_from_the_cache_it_returned():
    model = tiny_model(num_hidden_layers=3, attention_types=["row", "column", "conv"])
    prompt = random_stream()[:, :TEXT_LENGTH]
    new = STREAM_LENGTH - TEXT_LENGTH
    whole = model.generate(prompt, do_sample=False, max_new_tokens=new)
    first = model.generate(prompt, do_sample=False, max_new_tokens=5, return_dict_in_generate=True)
    rest = model.generate(first.sequences, cache=first.cache, do_sample=False, max_new_tokens=new - 5)
    assert torch.equal(rest, whole)
