"""DallePipeline with DALL·E Mini / Mega (`DalleBartForImageGeneration`), on a tiny random Mega converted from
min-dalle's file layout: the pipeline's loop against an uncached reference loop written out here, the converted
folder's defaults, the encoder run once per call, priming, callbacks, reranking, latent output, int8 and device_map.
Fine-tuning is in test_training_dalle_mega.py, parity with min-dalle's own loop in test_convert_dalle_mega.py."""

import pytest
import torch
import torch.nn.functional as F
from dalle_mega_utils import make_tiny_dalle_bart_pipeline

from hf_dalle import DalleBartForImageGeneration, DallePipeline


GRID_CODES = 16  # 4x4 codes of 64; 16x16 images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dalle_mega")
    make_tiny_dalle_bart_pipeline(path)
    return path / "pipeline"


@pytest.fixture(scope="module")
def pipe(folder):
    return DallePipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def plain(pipe):
    """The same pipeline without CLIP: candidates come back in sampling order."""
    return DallePipeline(pipe.tokenizer, pipe.transformer, pipe.vae, default_guidance_scale=16.0)


def seeded(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def sampled_codes(pipe, prompts, num_candidates, **kwargs) -> torch.LongTensor:
    """Every candidate's codes, prompt after prompt, in sampling order, `[P * N, 16]`."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    output = pipe(
        prompts, num_candidates=num_candidates, num_images_per_prompt=num_candidates, output_type="latent",
        generator=kwargs.pop("generator", None) or seeded(len(prompts) * num_candidates), **kwargs,
    )  # fmt: skip
    return output.images.flatten(1)


@torch.no_grad()
def reference_codes(
    model: DalleBartForImageGeneration,
    caption_ids: torch.LongTensor,
    seed: int,
    guidance_scale: float = 16.0,
    top_k: int = 256,
    temperature: float = 1.0,
    prefix: torch.LongTensor | None = None,
) -> torch.LongTensor:
    """One candidate drawn the long way: at every step the whole forward pass (encoder over the caption and the empty
    caption, decoder over the start token and all codes so far, no cache), guidance `uncond + s * (cond - uncond)` on
    the image-code logits, top-k, temperature, and the inverse-CDF draw of that candidate's uniform numbers
    (`torch.rand(steps, generator=Generator().manual_seed(seed))`)."""
    config = model.config
    codes = prefix if prefix is not None else torch.zeros(0, dtype=torch.long)
    uniforms = torch.rand(GRID_CODES - len(codes), generator=torch.Generator().manual_seed(seed))
    captions = torch.cat([caption_ids[None], model.unconditional_input_ids(1, len(caption_ids))])
    for uniform in uniforms:
        decoder_ids = torch.cat([torch.tensor([config.decoder_start_token_id]), codes])[None].repeat(2, 1)
        logits = model(input_ids=captions, decoder_input_ids=decoder_ids).logits[:, -1, : config.image_vocab_size]
        cond, uncond = logits.float()
        scores = (uncond + guidance_scale * (cond - uncond) if guidance_scale > 1 else cond) / temperature
        if top_k and top_k < len(scores):
            scores = scores.masked_fill(scores < scores.topk(top_k).values[-1], -float("inf"))
        cdf = scores.softmax(-1).cumsum(-1)
        code = torch.searchsorted(cdf, (uniform * cdf[-1])[None]).clamp(max=config.image_vocab_size - 1)
        codes = torch.cat([codes, code])
    return codes


def test_converted_folder_loads_with_min_dalles_sampling_defaults(folder, pipe):
    assert isinstance(pipe.transformer, DalleBartForImageGeneration)
    assert pipe.config.default_guidance_scale == 16.0
    assert (pipe.transformer.generation_config.top_k, pipe.transformer.generation_config.guidance_scale) == (256, 16)
    assert pipe.vae.config.pixel_range == "[0, 1]" and pipe.vae.config.has_encoder
    assert pipe.clip_model is not None and pipe.image_size == 16
    # A call that names nothing samples with those defaults (guidance 16, top-k 256).
    default = sampled_codes(pipe, "a red circle", 3)
    assert torch.equal(default, sampled_codes(pipe, "a red circle", 3, guidance_scale=16.0, top_k=256))
    assert not torch.equal(default, sampled_codes(pipe, "a red circle", 3, guidance_scale=1.0))


@pytest.mark.parametrize(
    "settings", [{}, {"guidance_scale": 1.0}, {"guidance_scale": 3.0, "top_k": 5, "temperature": 0.7}]
)
def test_pipeline_draws_the_codes_of_an_uncached_reference_loop(plain, settings):
    """Two prompts, three candidates each, in chunks of four (the second chunk spans both prompts): every candidate's
    codes are those of the reference loop with its own generator's numbers (cache, cross-attention cache, encoder
    states computed once and expanded per candidate, guidance halves, per-row draws)."""
    prompts = ["a red circle above a blue square", "a green triangle"]
    codes = sampled_codes(plain, prompts, 3, candidate_batch_size=4, **settings)
    caption_ids = plain.tokenizer.encode_captions(prompts)
    reference_settings = {"guidance_scale": 16.0, "top_k": 256, **settings}
    expected = torch.stack(
        [reference_codes(plain.transformer, caption_ids[i // 3], seed=i, **reference_settings) for i in range(6)]
    )
    assert torch.equal(codes, expected)
    assert len(codes.unique()) > 8  # sampled, not one code everywhere


def test_a_candidate_depends_only_on_its_generator(plain):
    reference = sampled_codes(plain, "a red circle", 5, candidate_batch_size=5)
    for batch_size in (1, 2, 8):
        assert torch.equal(sampled_codes(plain, "a red circle", 5, candidate_batch_size=batch_size), reference)
    assert torch.equal(sampled_codes(plain, "a red circle", 2), reference[:2])  # fewer candidates
    alone = sampled_codes(plain, "a red circle", 1, generator=seeded(1, offset=3))
    assert torch.equal(alone, reference[3:4])
    # Many prompts per call: each prompt's candidates are those of a call of its own with its generators.
    both = sampled_codes(plain, ["a red circle", "a blue square"], 2, candidate_batch_size=3)
    assert torch.equal(both[:2], reference[:2])
    assert torch.equal(both[2:], sampled_codes(plain, "a blue square", 2, generator=seeded(2, offset=2)))


def test_the_encoder_runs_once_per_call_and_the_caption_keys_once_per_chunk(plain):
    encoder_rows, cross_key_rows = [], []
    transformer = plain.transformer
    hooks = [
        transformer.get_encoder().register_forward_hook(lambda m, args, out: encoder_rows.append(len(args[0]))),
        transformer.get_decoder()
        .layers[0]
        .encoder_attn.k_proj.register_forward_hook(lambda m, args, out: cross_key_rows.append(len(args[0]))),
    ]
    try:
        sampled_codes(plain, ["a red circle", "a blue square"], 5, candidate_batch_size=4)
        assert encoder_rows == [4]  # the two prompts and their two empty captions, once
        assert cross_key_rows == [8, 8, 4]  # three chunks (4 + 4 + 2 candidates), both halves, at their first step
        encoder_rows.clear()
        plain("a red circle", num_candidates=3, guidance_scale=1.0, rerank="perplexity", generator=seeded(3))
        assert encoder_rows == [1]  # no guidance: the prompt alone; perplexity reranking reuses the states
    finally:
        for hook in hooks:
            hook.remove()


def test_priming_with_the_top_rows_or_an_image_prompt_mask(plain):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    image_codes = plain.vae.encode(image[None]).indices.flatten()  # [0, 1] pixels as they are
    codes = sampled_codes(plain, "a red circle", 2, image=image, num_prime_rows=1)
    assert (codes[:, :4] == image_codes[:4]).all()
    caption_ids = plain.tokenizer.encode_captions(["a red circle"])[0]
    for seed in range(2):
        assert torch.equal(codes[seed], reference_codes(plain.transformer, caption_ids, seed, prefix=image_codes[:4]))
    # Codes kept at any grid positions: the left column.
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 0] = True
    codes = sampled_codes(plain, "a red circle", 3, image=image, image_prompt_mask=mask)
    assert (codes[:, mask.flatten()] == image_codes[mask.flatten()]).all()
    assert len({tuple(row) for row in codes[:, ~mask.flatten()].tolist()}) == 3  # the rest is sampled


def test_callbacks_read_and_rewrite_codes_and_read_image_code_logits(plain):
    seen = []

    def record(pipeline, step, timestep, callback_kwargs):
        seen.append({name: tensor.clone() for name, tensor in callback_kwargs.items()})
        return callback_kwargs

    inputs = ["codes", "latents", "logits"]
    codes = sampled_codes(
        plain, "a red circle", 2, callback_on_step_end=record, callback_on_step_end_tensor_inputs=inputs
    )
    assert (
        len(seen) == GRID_CODES and torch.equal(seen[-1]["codes"], codes) and torch.equal(seen[-1]["latents"], codes)
    )
    assert seen[0]["logits"].shape == (2, 64)  # the image codes only, not the decoder table's 66 rows
    assert torch.equal(codes, sampled_codes(plain, "a red circle", 2))  # reading changes nothing

    # Rewriting the first row after it is drawn: the model reads the new row (a fresh cache, refilled), exactly as a
    # run primed with it.
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    first_row = plain.vae.encode(image[None]).indices.flatten()[:4]
    logits = {}

    def rewrite(pipeline, step, timestep, callback_kwargs):
        if timestep == 4:
            logits["rewritten"] = callback_kwargs["logits"]
        if timestep == 3:
            callback_kwargs["codes"] = torch.cat([first_row.expand(2, 4), callback_kwargs["codes"][:, 4:]], dim=1)
        return callback_kwargs

    def first(pipeline, step, timestep, callback_kwargs):
        logits.setdefault("primed", callback_kwargs["logits"])
        return callback_kwargs

    rewritten = sampled_codes(
        plain, "a red circle", 2, callback_on_step_end=rewrite, callback_on_step_end_tensor_inputs=inputs
    )
    sampled_codes(plain, "a red circle", 2, image=image, num_prime_rows=1, callback_on_step_end=first,
                  callback_on_step_end_tensor_inputs=inputs)  # fmt: skip
    assert (rewritten[:, :4] == first_row).all()
    torch.testing.assert_close(logits["rewritten"], logits["primed"], atol=1e-5, rtol=1e-5)


def test_reranking_latent_output_and_decoding(pipe, plain):
    kwargs = {"num_candidates": 4, "num_images_per_prompt": 2, "candidate_batch_size": 3}
    images = pipe("a red circle", generator=seeded(4), output_type="pt", **kwargs)
    latents = pipe("a red circle", generator=seeded(4), output_type="latent", **kwargs)
    assert images.scores == sorted(images.scores, reverse=True) and latents.scores == images.scores
    assert latents.images.shape == (2, 4, 4) and latents.images.dtype == torch.long
    decoded = pipe.vae.decode(latents.images).sample
    torch.testing.assert_close(images.images, decoded)
    assert images.images.shape == (2, 3, 16, 16) and 0 <= decoded.min() and decoded.max() <= 1
    # The CLIP scores are those of the decoded candidates.
    all_codes = sampled_codes(plain, "a red circle", 4)
    text_embeds = pipe.clip_text_embeds(["a red circle"])
    scores = pipe.clip_scores(pipe.decode(all_codes), text_embeds.expand(4, -1))
    assert images.scores == pytest.approx(scores.sort(descending=True).values[:2].tolist(), abs=1e-6)
    assert latents.candidate_indices == scores.argsort(descending=True)[:2].tolist()

    # Perplexity reranking: the model's own cross-entropy of the codes, from a plain forward pass.
    output = plain("a red circle", rerank="perplexity", generator=seeded(4), output_type="latent", **kwargs)
    config = plain.transformer.config
    decoder_ids = torch.cat([torch.full((4, 1), config.decoder_start_token_id), all_codes[:, :-1]], dim=1)
    with torch.no_grad():
        logits = plain.transformer(
            input_ids=plain.tokenizer.encode_captions(["a red circle"] * 4), decoder_input_ids=decoder_ids
        ).logits[..., : config.image_vocab_size]
    perplexities = F.cross_entropy(logits.transpose(1, 2), all_codes, reduction="none").mean(1).exp()
    torch.testing.assert_close(torch.tensor(output.scores), perplexities.sort().values[:2])


def test_int8_weights_and_device_map_offload(folder, plain, tmp_path):
    expected = sampled_codes(plain, "a red circle", 3)
    model_bytes = sum(p.numel() * p.element_size() for p in plain.transformer.parameters())
    offloaded = DallePipeline.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": model_bytes // 2}, offload_folder=tmp_path / "offload"
    )
    assert "disk" in offloaded.transformer.hf_device_map.values()
    offloaded = DallePipeline(offloaded.tokenizer, offloaded.transformer, offloaded.vae, default_guidance_scale=16.0)
    assert torch.equal(sampled_codes(offloaded, "a red circle", 3), expected)

    torchao = pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    quantized = DallePipeline.from_pretrained(folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    layer = quantized.transformer.get_decoder().layers[0]
    assert isinstance(layer.glu.fc0.weight, torchao.quantization.Int8Tensor)
    assert isinstance(layer.encoder_attn.k_proj.weight, torchao.quantization.Int8Tensor)
    captions = plain.transformer.encode_captions(plain.tokenizer.encode_captions(["a red circle", "a blue square"]))
    codes = expected[:2, :-1]
    with torch.no_grad():
        reference = plain.transformer.image_code_logits(captions, codes)
        logits = quantized.transformer.image_code_logits(quantized.transformer.encode_captions(
            quantized.tokenizer.encode_captions(["a red circle", "a blue square"])), codes)  # fmt: skip
    # Every image-code logit within 2% of the largest |logit| (per-row int8 rounding), and really rounded.
    torch.testing.assert_close(logits, reference, atol=0.02 * reference.abs().max().item(), rtol=0)
    assert not torch.equal(logits, reference)
    assert sampled_codes(quantized, "a red circle", 3).shape == (3, GRID_CODES)


def test_priming_without_the_vqgan_encoder_says_what_is_missing(folder, tmp_path):
    """min-dalle ships the VQGAN's decoder alone: a folder converted without dalle-mini's encoder generates, and asked
    to prime says that the encoder is missing and how to add it."""
    from hf_dalle.conversion.convert_dalle_mega import convert_dalle_mega

    convert_dalle_mega(tmp_path / "decoder_only", min_dalle_dir=folder.parent / "sources" / "pretrained")
    pipe = DallePipeline.from_pretrained(tmp_path / "decoder_only")
    assert not pipe.vae.config.has_encoder
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"no encoder .*--vqgan_flax_checkpoint"):
        pipe("a red circle", image=image, num_prime_rows=1, num_candidates=1, generator=seeded(1))
    assert pipe("a red circle", num_candidates=1, generator=seeded(1), output_type="pt").images.shape == (1, 3, 16, 16)


def test_a_lora_adapter_of_every_projection_loads_and_unloads(folder, plain, tmp_path):
    from hf_dalle.lora import add_lora_adapter, save_lora_adapter

    donor = DallePipeline.from_pretrained(folder)
    add_lora_adapter(donor.transformer, rank=2)
    wrapped = {name.rsplit(".", 1)[-1] for name, m in donor.transformer.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "out_proj", "fc0", "fc1", "fc2"}
    assert all(("lora_" in name) == p.requires_grad for name, p in donor.transformer.named_parameters())
    with torch.no_grad():
        for name, param in donor.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # lora_B starts at zero: make the adapter change the outputs
    save_lora_adapter(donor.transformer, tmp_path / "adapter")
    tuned = DallePipeline(donor.tokenizer, donor.transformer, donor.vae, default_guidance_scale=16.0)

    pipe = DallePipeline.from_pretrained(folder)
    pipe = DallePipeline(pipe.tokenizer, pipe.transformer, pipe.vae, default_guidance_scale=16.0)
    base = sampled_codes(plain, "a red circle", 3)
    pipe.load_lora_weights(tmp_path / "adapter")
    adapted = sampled_codes(pipe, "a red circle", 3)
    assert torch.equal(adapted, sampled_codes(tuned, "a red circle", 3)) and not torch.equal(adapted, base)
    pipe.unload_lora_weights()
    assert torch.equal(sampled_codes(pipe, "a red circle", 3), base)
