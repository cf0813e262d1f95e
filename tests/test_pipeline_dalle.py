import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch

from hf_dalle import DallePipeline
from hf_dalle.cli import main as cli_main
from hf_dalle.pipelines.pipeline_dalle import BestCandidates
from hf_dalle.testing_utils import make_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


def seeded(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def without_clip(pipe: DallePipeline) -> DallePipeline:
    return DallePipeline(tokenizer=pipe.tokenizer, transformer=pipe.transformer, vae=pipe.vae)


def all_candidates(pipe, prompt, generators, **kwargs):
    """Every candidate in sampling order (no CLIP: no rerank), as tensors."""
    n = len(generators)
    return without_clip(pipe)(
        prompt, num_candidates=n, num_images_per_prompt=n, generator=generators, output_type="pt", **kwargs
    ).images


def test_output_types(pipe):
    kwargs = {"num_candidates": 3, "num_images_per_prompt": 2, "generator": seeded(6)}
    pil = pipe(["a red circle", "a blue square"], **kwargs)
    assert len(pil.images) == 4 and all(isinstance(i, PIL.Image.Image) and i.size == (32, 32) for i in pil.images)
    assert len(pil.scores) == 4
    np_out = pipe(["a red circle", "a blue square"], output_type="np", **{**kwargs, "generator": seeded(6)})
    assert np_out.images.shape == (4, 32, 32, 3) and np_out.images.min() >= 0 and np_out.images.max() <= 1
    pt = pipe(["a red circle", "a blue square"], output_type="pt", **{**kwargs, "generator": seeded(6)})
    assert pt.images.shape == (4, 3, 32, 32)
    torch.testing.assert_close(torch.from_numpy(np_out.images).permute(0, 3, 1, 2), pt.images)
    assert np.array_equal(np.asarray(pil.images[0]), (np_out.images[0] * 255).round().astype(np.uint8))
    assert pil.scores == pt.scores
    images, scores = pipe("a red circle", num_candidates=2, generator=seeded(2), return_dict=False)
    assert len(images) == 1 and len(scores) == 1


def test_seed_independent_of_batch_size_candidate_count_and_chunking(pipe):
    reference = all_candidates(pipe, "a red circle", seeded(6), candidate_batch_size=6)
    for batch_size in (1, 4):
        torch.testing.assert_close(
            all_candidates(pipe, "a red circle", seeded(6), candidate_batch_size=batch_size), reference
        )
    # Fewer candidates: the same first images.
    torch.testing.assert_close(all_candidates(pipe, "a red circle", seeded(3)), reference[:3])
    # A candidate is its generator's: candidate 4 alone, from generator 4.
    torch.testing.assert_close(all_candidates(pipe, "a red circle", seeded(1, offset=4)), reference[4:5])
    # Different seeds draw different images.
    assert not torch.allclose(reference[0], reference[1])
    # With other prompts in the batch, a prompt's candidates stay the same.
    mixed = without_clip(pipe)(
        ["a blue square", "a red circle"], num_candidates=6, num_images_per_prompt=6,
        generator=seeded(6, offset=100) + seeded(6), candidate_batch_size=4, output_type="pt",
    ).images  # fmt: skip
    torch.testing.assert_close(mixed[6:], reference)


def test_rerank_order_is_clip_score_order(pipe):
    candidates = all_candidates(pipe, "a blue square", seeded(8))
    # CLIP scores computed here, independently of the pipeline: CLIP's normalisation by hand, cosine similarity.
    mean = torch.tensor(pipe.clip_processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(pipe.clip_processor.image_processor.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        image_embeds = pipe.clip_model.get_image_features(pixel_values=(candidates - mean) / std).pooler_output
        ids = pipe.tokenizer(["a blue square"], return_tensors="pt").input_ids
        text_embeds = pipe.clip_model.get_text_features(input_ids=ids).pooler_output
    expected = torch.nn.functional.cosine_similarity(image_embeds, text_embeds)
    order = expected.argsort(descending=True)

    out = pipe(
        "a blue square",
        num_candidates=8,
        num_images_per_prompt=3,
        generator=seeded(8),
        candidate_batch_size=3,
        output_type="pt",
    )
    torch.testing.assert_close(out.images, candidates[order[:3]])
    # CLIP's image processor (PIL backend without torchvision) rounds pixels to 8 bits: scores agree to ~1e-4.
    torch.testing.assert_close(torch.tensor(out.scores), expected[order[:3]], atol=5e-4, rtol=0)
    assert out.scores == sorted(out.scores, reverse=True)


def test_latent_output_and_candidate_indices_name_the_returned_candidates(pipe):
    candidates = all_candidates(pipe, "a blue square", seeded(6))
    kwargs = {"num_candidates": 6, "num_images_per_prompt": 3, "candidate_batch_size": 4}
    out = pipe("a blue square", generator=seeded(6), output_type="pt", **kwargs)
    torch.testing.assert_close(out.images, candidates[out.candidate_indices])
    assert len(set(out.candidate_indices)) == 3
    latent = pipe("a blue square", generator=seeded(6), output_type="latent", **kwargs)
    assert latent.images.dtype == torch.long and latent.images.shape == (3, 4, 4)
    assert latent.scores == out.scores and latent.candidate_indices == out.candidate_indices
    torch.testing.assert_close(pipe.vae.decode(latent.images).sample, out.images)


def test_best_candidates_merged_chunk_by_chunk_are_the_best_of_all():
    generator = torch.Generator().manual_seed(0)
    prompt_index = torch.arange(3).repeat_interleave(7)  # 3 prompts x 7 candidates, prompt after prompt
    candidate_index = torch.arange(7).repeat(3)
    codes = torch.randint(0, 32, (21, 16), generator=generator)
    scores = torch.randint(0, 4, (21,), generator=generator).float()  # many ties
    for descending in (True, False, None):
        best = BestCandidates(keep=3, descending=descending, num_codes=16)
        for start in range(0, 21, 5):  # chunks that span prompts
            chunk = slice(start, start + 5)
            best.add(
                prompt_index[chunk],
                candidate_index[chunk],
                codes[chunk],
                scores[chunk] if descending is not None else None,
            )
        expected = []
        for prompt in range(3):
            rows = (prompt_index == prompt).nonzero()[:, 0]
            if descending is not None:  # ties in sampling order
                rows = rows[torch.sort(scores[rows], descending=descending, stable=True).indices]
            expected += rows[:3].tolist()
        assert best.prompt_index.tolist() == prompt_index[expected].tolist()
        assert best.candidate_index.tolist() == candidate_index[expected].tolist()
        assert torch.equal(best.codes, codes[expected])
        assert best.scores is None if descending is None else torch.equal(best.scores, scores[expected])


def test_generate_progressively_yields_after_each_step_and_chunk_then_the_output(pipe):
    kwargs = {"num_candidates": 5, "num_images_per_prompt": 2, "candidate_batch_size": 3, "output_type": "pt"}
    prompts = ["a red circle", "a blue square"]
    steps = list(pipe.generate_progressively(prompts, generator=seeded(10), **kwargs))
    chunks = [p for p in steps if p.codes is None]
    assert [(p.num_sampled, p.num_candidates) for p in chunks] == [(3, 10), (6, 10), (9, 10), (10, 10), (10, 10)]
    assert all(p.output is None for p in steps[:-1])
    # Between two chunks, a progress after each of the 16 codes but the last, with the chunk's codes so far: each
    # one the previous plus a code, ending in the chunk's candidates.
    partial = [p for p in steps if p.codes is not None]
    assert len(partial) == 4 * 15 and [p.codes.shape for p in partial[:15]] == [(3, n) for n in range(1, 16)]
    assert all(torch.equal(b.codes[:, :-1], a.codes) for a, b in zip(partial[:14], partial[1:15]))
    assert partial[0].prompt_index.tolist() == [0, 0, 0] and partial[-1].prompt_index.tolist() == [1]
    assert partial[15].candidate_index.tolist() == [3, 4, 0]  # the second chunk spans the two prompts
    last_codes = partial[14].codes
    grids = pipe(prompts[0], generator=seeded(3), num_candidates=3, num_images_per_prompt=3, output_type="latent")
    assert torch.equal(grids.images.flatten(1)[:, :15], last_codes[grids.candidate_indices])
    expected = pipe(prompts, generator=seeded(10), **kwargs)
    torch.testing.assert_close(steps[-1].output.images, expected.images)
    assert steps[-1].output.scores == expected.scores
    assert steps[-1].output.candidate_indices == expected.candidate_indices
    # Interrupted between two chunks, or in the middle of the second: the best of the candidates finished by then.
    first_three = pipe("a red circle", generator=seeded(3), **{**kwargs, "num_candidates": 3})
    for partial_steps in (0, 5):
        steps = pipe.generate_progressively("a red circle", generator=seeded(5), **kwargs)
        while next(steps).codes is not None:  # the first chunk's codes
            pass
        for _ in range(partial_steps):
            assert next(steps).codes.shape == (2, _ + 1)
        pipe._interrupt = True
        last = next(steps)
        assert last.num_sampled == 3 and last.output is not None
        torch.testing.assert_close(last.output.images, first_three.images)
        assert last.output.scores == first_three.scores


def test_decode_partial_draws_the_codes_so_far_and_grays_the_rest(pipe):
    codes = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pipe.decode_partial(codes), pipe.decode(codes).float())
    partial = pipe.decode_partial(codes[:, :6])  # the first row and two codes of the second (8x8 pixels a code)
    assert (partial[:, :, 8:16, 16:] == 0.5).all() and (partial[:, :, 16:] == 0.5).all()
    completed = pipe.decode(torch.nn.functional.pad(codes[:, :6], (0, 10)))  # the rest as code 0
    torch.testing.assert_close(partial[:, :, :8], completed[:, :, :8])
    torch.testing.assert_close(partial[:, :, 8:16, :16], completed[:, :, 8:16, :16])
    assert not torch.allclose(completed[:, :, :8], pipe.decode(codes)[:, :, :8])  # codes below reach up: a preview


def test_without_clip_returns_first_candidates_with_warning(pipe, caplog):
    plain = without_clip(pipe)
    candidates = all_candidates(pipe, "a red circle", seeded(4))
    with caplog.at_level(logging.WARNING):
        out = plain("a red circle", num_candidates=4, num_images_per_prompt=2, generator=seeded(4), output_type="pt")
    assert "No CLIP model" in caplog.text
    assert out.scores is None
    torch.testing.assert_close(out.images, candidates[:2])


def test_output_says_what_the_model_did_not_read(pipe, caplog):
    """A caption cut at the text length, or with words the tokenizer does not know: a short message per prompt, in the
    output and the log (not the whole prompt again, never half a character)."""
    max_length = pipe.transformer.config.max_text_length
    fits = "a red circle"
    too_long = fits + " above a blue square" * 200
    unknown = "a red zyzzyva"
    with caplog.at_level(logging.WARNING):
        out = pipe([fits, too_long, unknown], num_candidates=1, generator=seeded(3))
    assert out.prompt_warnings[0] is None
    prefix = f"The model reads {max_length} tokens; the rest is ignored: '"
    assert out.prompt_warnings[1].startswith(prefix) and out.prompt_warnings[1].endswith("…'.")
    dropped = out.prompt_warnings[1][len(prefix) : -len("…'.")]
    assert len(dropped) < 40 and dropped in too_long[len(fits) :]  # the start of what was cut, shortened
    assert out.prompt_warnings[2].startswith("Words the model's tokenizer does not know")
    assert "'zyzzyva'" in out.prompt_warnings[2] and "'red'" not in out.prompt_warnings[2]
    assert len(caplog.text) < 600  # the 4,000-character prompt is not repeated
    assert "is ignored" in caplog.text and "zyzzyva" in caplog.text


def test_truncation_never_cuts_a_character_in_half(pipe):
    max_length = pipe.transformer.config.max_text_length
    # Each emoji is 4 bytes, several byte-level tokens: the cut falls inside one.
    prompt = "a red circle" + " 🐱" * max_length
    warning = pipe.prompt_warning(prompt)
    dropped = warning.split("ignored: ", 1)[1]
    assert "\ufffd" not in dropped and dropped.strip("'.").replace("🐱", "").strip(" …") == ""


def test_guidance_with_prompt_as_negative_equals_no_guidance(pipe):
    # uncond + s * (cond - uncond) == cond when the negative prompt is the prompt itself: the conditional and
    # unconditional rows must stay aligned through the batched forward and the cache.
    plain = all_candidates(pipe, "a red circle", seeded(4))
    guided = all_candidates(pipe, "a red circle", seeded(4), guidance_scale=3.0, negative_prompt="a red circle")
    torch.testing.assert_close(guided, plain)
    # A real unconditional stream changes the images.
    unconditional = all_candidates(pipe, "a red circle", seeded(4), guidance_scale=3.0)
    assert not torch.allclose(unconditional, plain)


def test_one_negative_prompt_for_every_prompt(pipe):
    prompts = ["a red circle", "a blue square"]
    kwargs = {"num_candidates": 2, "num_images_per_prompt": 2, "guidance_scale": 3.0, "output_type": "pt"}
    one = pipe(prompts, negative_prompt="a green triangle", generator=seeded(4), **kwargs).images
    each = pipe(prompts, negative_prompt=["a green triangle"] * 2, generator=seeded(4), **kwargs).images
    torch.testing.assert_close(one, each)


def test_guidance_scale_one_equals_no_guidance(pipe):
    torch.testing.assert_close(
        all_candidates(pipe, "a green triangle", seeded(3), guidance_scale=1.0, negative_prompt="a red circle"),
        all_candidates(pipe, "a green triangle", seeded(3)),
    )


def test_default_guidance_scale_is_saved_and_used(pipe, tmp_path):
    DallePipeline(**pipe.components, default_guidance_scale=2.5).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["default_guidance_scale"] == 2.5
    loaded = DallePipeline.from_pretrained(tmp_path)
    assert loaded.config.default_guidance_scale == 2.5
    # Without CLIP, so that the candidates come back in sampling order.
    loaded = DallePipeline(
        tokenizer=loaded.tokenizer, transformer=loaded.transformer, vae=loaded.vae,
        default_guidance_scale=loaded.config.default_guidance_scale,
    )  # fmt: skip

    def candidates(**kwargs):
        return loaded(
            "a red circle", num_candidates=3, num_images_per_prompt=3, generator=seeded(3), output_type="pt", **kwargs
        ).images

    torch.testing.assert_close(candidates(), all_candidates(pipe, "a red circle", seeded(3), guidance_scale=2.5))
    # An explicit scale wins over the default.
    torch.testing.assert_close(candidates(guidance_scale=1.0), all_candidates(pipe, "a red circle", seeded(3)))
    assert not torch.allclose(candidates(), candidates(guidance_scale=1.0))
    with pytest.raises(ValueError, match="default_guidance_scale` .* must be a finite number >= 1"):
        DallePipeline(**pipe.components, default_guidance_scale=0.5)


def test_priming_keeps_the_top_rows(pipe):
    image = torch.rand(3, 32, 32)
    primed_codes = pipe.vae.encode(image[None]).indices[0, :2]

    def codes(image, num_prime_rows, n):
        return pipe(
            "a red circle", num_candidates=n, num_images_per_prompt=n, generator=seeded(n), image=image,
            num_prime_rows=num_prime_rows, output_type="latent",
        ).images  # fmt: skip

    primed = codes(image, 2, 5)
    assert primed.shape == (5, 4, 4)
    assert (primed[:, :2] == primed_codes).all()
    assert len({tuple(c[2:].flatten().tolist()) for c in primed}) > 1  # the rest is sampled
    # A PIL image works the same way.
    pil = PIL.Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    pil_codes = pipe.vae.encode(torch.from_numpy(np.asarray(pil) / 255).permute(2, 0, 1)[None].float()).indices[0, :1]
    assert (codes(pil, 1, 2)[:, :1] == pil_codes).all()


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "transformer" / "model.safetensors").exists()
    assert (tmp_path / "vae" / "model.safetensors").exists()
    loaded = DallePipeline.from_pretrained(tmp_path)
    kwargs = {"num_candidates": 4, "num_images_per_prompt": 2, "generator": seeded(4), "output_type": "pt"}
    expected = pipe("a red circle", **kwargs)
    got = loaded("a red circle", **{**kwargs, "generator": seeded(4)})
    assert torch.equal(expected.images, got.images)
    torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(expected.scores), atol=1e-6, rtol=0)


def test_push_to_hub_and_load_by_id(pipe, hub_server, tmp_path):
    pipe.push_to_hub("tiny-dalle")
    files = hub_server.files("hf-dalle-tester/tiny-dalle")
    assert "model_index.json" in files and "transformer/model.safetensors" in files
    pipe.save_pretrained(tmp_path)
    assert files["transformer/model.safetensors"] == (tmp_path / "transformer" / "model.safetensors").read_bytes()
    loaded = DallePipeline.from_pretrained("hf-dalle-tester/tiny-dalle")
    kwargs = {"num_candidates": 2, "generator": seeded(2), "output_type": "pt"}
    assert torch.equal(
        loaded("a red circle", **kwargs).images, pipe("a red circle", **{**kwargs, "generator": seeded(2)}).images
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "non-empty"),
        ({"prompt": []}, "non-empty"),
        (
            {"prompt": "a red circle", "num_candidates": 2, "num_images_per_prompt": 3},
            "between 1 and num_candidates=2",
        ),
        ({"prompt": "a red circle", "num_candidates": 0}, "num_candidates"),
        ({"prompt": "a red circle", "temperature": 0}, "temperature"),
        ({"prompt": "a red circle", "top_p": 1.5}, "top_p"),
        ({"prompt": "a red circle", "guidance_scale": 0.5}, "guidance_scale"),
        ({"prompt": "a red circle", "num_candidates": 2, "generator": [torch.Generator()]}, "one per candidate"),
        ({"prompt": "a red circle", "image": torch.rand(3, 64, 64), "num_prime_rows": 1}, "must be 32x32"),
        ({"prompt": "a red circle", "image": torch.rand(3, 32, 32), "num_prime_rows": 4}, "num_prime_rows"),
        ({"prompt": "a red circle", "num_prime_rows": 1}, "needs an `image`"),
        ({"prompt": "a red circle", "output_type": "png"}, "`output_type` must be 'pil', 'np', 'pt' or 'latent'"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, "one per prompt"),
    ],
)
def test_bad_input_raises(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_candidates": 2, **kwargs})


def test_wrong_component_types_raise(pipe):
    with pytest.raises(ValueError, match="`vae` must be a DalleVAE or DalleVQGAN, got DalleForImageGeneration"):
        DallePipeline(tokenizer=pipe.tokenizer, transformer=pipe.transformer, vae=pipe.transformer)
    with pytest.raises(ValueError, match="pass both or neither"):
        DallePipeline(tokenizer=pipe.tokenizer, transformer=pipe.transformer, vae=pipe.vae, clip_model=pipe.clip_model)


def test_cli_generate_writes_files(pipe, tmp_path, capsys):
    model_dir = tmp_path / "model"
    pipe.save_pretrained(model_dir)
    out_dir = tmp_path / "out"
    code = cli_main(
        ["generate", "a red circle", "a blue square", "--model", str(model_dir), "--num-candidates", "3",
         "--num-images", "2", "--seed", "7", "--output-dir", str(out_dir)]
    )  # fmt: skip
    assert code == 0
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert pngs == [
        "a_blue_square_0.png",
        "a_blue_square_1.png",
        "a_red_circle_0.png",
        "a_red_circle_1.png",
        "grid.png",
    ]
    grid = np.asarray(PIL.Image.open(out_dir / "grid.png"))
    assert grid.shape[0] == 64 and grid.shape[1] > 64  # two rows of two 32x32 images, their captions to the left
    images = np.asarray(PIL.Image.open(out_dir / "a_blue_square_1.png"))
    assert np.array_equal(grid[32:, -32:], images)
    captions = grid[:, : grid.shape[1] - 64]
    assert (captions[:32] < 128).any() and (captions[32:] < 128).any()  # each row has its caption's text
    assert not np.array_equal(captions[:32], captions[32:])
    printed = capsys.readouterr().out
    assert printed.count("score=") == 4 and "note:" not in printed
    # The files are the pipeline's images for the per-candidate seeds 7, 8, ...
    expected = pipe(
        ["a red circle", "a blue square"], num_candidates=3, num_images_per_prompt=2, generator=seeded(6, offset=7)
    )
    assert np.array_equal(np.asarray(PIL.Image.open(out_dir / "a_blue_square_1.png")), np.asarray(expected.images[3]))


def test_progress_bar_says_what_it_counts(pipe, capsys):
    pipe("a red circle", num_candidates=2, generator=seeded(2))
    err = capsys.readouterr().err
    assert "Sampling image codes" in err and "code/s" in err
    pipe.set_progress_bar_config(desc="mine")
    try:
        pipe("a red circle", num_candidates=1, generator=seeded(1))
        assert "mine" in capsys.readouterr().err
    finally:
        pipe.set_progress_bar_config()
