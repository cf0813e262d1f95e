"""The diffusers pipeline contract: `callback_on_step_end` (reading, replacing codes, interrupting), components
wrapped by `torch.compile`, the example docstring of `__call__`, and model card templates inside the wheel."""

import doctest
import inspect
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from hf_dalle import DallePipeline
from hf_dalle.testing_utils import make_tiny_pipeline


GRID_CODES = 16  # the tiny pipeline's 4x4 code grid


@pytest.fixture(scope="module")
def pipe():
    tiny = make_tiny_pipeline()
    return DallePipeline(tokenizer=tiny.tokenizer, transformer=tiny.transformer, vae=tiny.vae)  # no CLIP: no rerank


def seeded(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def candidates(pipe, n=4, **kwargs):
    return pipe(
        "a red circle", num_candidates=n, num_images_per_prompt=n, generator=seeded(n), output_type="pt", **kwargs
    ).images


def decode(pipe, codes):
    return pipe.vae.decode(codes.view(-1, 4, 4)).sample


def test_callback_sees_every_step_and_the_final_codes(pipe):
    calls = []

    def record(pipeline, step, timestep, callback_kwargs):
        assert pipeline is pipe
        calls.append((step, timestep, {name: t.clone() for name, t in callback_kwargs.items()}))
        return callback_kwargs

    images = candidates(
        pipe,
        candidate_batch_size=3,
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["codes", "logits"],
    )
    # Two chunks (3 + 1 candidates) of 16 steps: the step counts on across chunks, the timestep is the grid position.
    assert [step for step, _, _ in calls] == list(range(2 * GRID_CODES))
    assert [timestep for _, timestep, _ in calls] == list(range(GRID_CODES)) * 2
    for step, timestep, tensors in calls:
        assert set(tensors) == {"codes", "logits"}
        assert tensors["codes"].shape == (3 if step < GRID_CODES else 1, timestep + 1)
        assert tensors["logits"].shape == (tensors["codes"].shape[0], pipe.transformer.config.image_vocab_size)
        # The step's codes are drawn from these logits: never a code the logits give no probability.
        drawn = tensors["codes"][:, -1]
        assert torch.isfinite(tensors["logits"].gather(1, drawn[:, None])).all()
    last_codes = torch.cat([calls[GRID_CODES - 1][2]["codes"], calls[-1][2]["codes"]])
    torch.testing.assert_close(decode(pipe, last_codes), images)
    # Reading only: the same images as without a callback.
    torch.testing.assert_close(images, candidates(pipe))


def test_callback_replaces_the_newest_codes(pipe):
    def force_code_5(pipeline, step, timestep, callback_kwargs):
        codes = callback_kwargs["codes"].clone()
        codes[:, -1] = 5
        return {"codes": codes}

    images = candidates(pipe, n=2, callback_on_step_end=force_code_5)
    torch.testing.assert_close(images, decode(pipe, torch.full((2, GRID_CODES), 5)))


def test_callback_rewriting_earlier_codes_reencodes_them(pipe):
    # Rewrite the first two rows once they are drawn: the model must then read the rewritten rows, exactly as if the
    # run had been primed with them (the logits of the next position agree).
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    primed = pipe.vae.encode(image[None]).indices[0, :2].flatten()
    rewritten_logits, primed_logits = {}, {}

    def rewrite(pipeline, step, timestep, callback_kwargs):
        if timestep == 8:
            rewritten_logits["next"] = callback_kwargs["logits"]
        if timestep != 7:
            return callback_kwargs
        codes = callback_kwargs["codes"].clone()
        codes[:, :8] = primed
        return {"codes": codes}

    def record_first(pipeline, step, timestep, callback_kwargs):
        primed_logits.setdefault("next", callback_kwargs["logits"])
        return callback_kwargs

    inputs = ["codes", "logits"]
    candidates(pipe, n=2, callback_on_step_end=rewrite, callback_on_step_end_tensor_inputs=inputs)
    candidates(
        pipe, n=2, image=image, num_prime_rows=2, callback_on_step_end=record_first,
        callback_on_step_end_tensor_inputs=inputs,
    )  # fmt: skip
    torch.testing.assert_close(rewritten_logits["next"], primed_logits["next"], atol=1e-5, rtol=1e-5)


def test_bad_callback_outputs_raise(pipe):
    with pytest.raises(ValueError, match="must return a dict"):
        candidates(pipe, n=1, callback_on_step_end=lambda *args: None)
    with pytest.raises(ValueError, match=r"`codes` returned by `callback_on_step_end` must be .* values in \[0, 32\)"):
        candidates(pipe, n=1, callback_on_step_end=lambda p, s, t, kwargs: {"codes": kwargs["codes"] + 100})
    with pytest.raises(ValueError, match=r"has to be in \['latents', 'codes', 'logits'\], but found \['noise'\]"):
        candidates(pipe, n=1, callback_on_step_end=lambda *args: {}, callback_on_step_end_tensor_inputs=["noise"])


def test_interrupt_returns_the_candidates_finished_before(pipe):
    reference = candidates(pipe, n=4)

    def stop_at(stop_step):
        def callback(pipeline, step, timestep, callback_kwargs):
            if step == stop_step:
                pipeline._interrupt = True
            return callback_kwargs

        return callback

    # Stopped in the second chunk of two: the first chunk's candidates come back.
    images = candidates(pipe, candidate_batch_size=2, callback_on_step_end=stop_at(GRID_CODES + 3))
    assert pipe.interrupt
    torch.testing.assert_close(images, reference[:2])
    # Stopped on the last code of the first chunk: that chunk is complete.
    torch.testing.assert_close(
        candidates(pipe, candidate_batch_size=2, callback_on_step_end=stop_at(GRID_CODES - 1)), reference[:2]
    )
    # Stopped before any candidate is finished: no images; the next call runs again.
    out = pipe("a red circle", num_candidates=2, generator=seeded(2), callback_on_step_end=stop_at(0))
    assert out.images == [] and out.scores is None
    torch.testing.assert_close(candidates(pipe), reference)


class RecordLogits(PipelineCallback):
    tensor_inputs = ["logits"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.seen = getattr(self, "seen", []) + [sorted(callback_kwargs)]
        return callback_kwargs


class StopAfter(PipelineCallback):
    tensor_inputs = ["codes"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == self.config.cutoff_step_index:
            pipeline._interrupt = True
        return callback_kwargs


def test_pipeline_callbacks_name_their_tensor_inputs(pipe):
    record = RecordLogits()
    candidates(pipe, n=1, callback_on_step_end=record)
    assert record.seen == [["logits"]] * GRID_CODES
    record, stop = RecordLogits(), StopAfter(cutoff_step_ratio=None, cutoff_step_index=GRID_CODES - 1)
    images = candidates(pipe, n=3, candidate_batch_size=1, callback_on_step_end=MultiPipelineCallbacks([record, stop]))
    assert record.seen == [["codes", "logits"]] * GRID_CODES
    torch.testing.assert_close(images, candidates(pipe, n=1))


def test_latents_are_the_codes_under_diffusers_name(pipe):
    seen = []

    def zero_the_newest_latent(pipeline, step, timestep, callback_kwargs):
        assert callback_kwargs["latents"] is callback_kwargs["codes"]
        seen.append(callback_kwargs["latents"].shape)
        latents = callback_kwargs["latents"].clone()
        latents[:, -1] = 0
        return {**callback_kwargs, "latents": latents}

    images = candidates(
        pipe, n=2, callback_on_step_end=zero_the_newest_latent, callback_on_step_end_tensor_inputs=["latents", "codes"]
    )
    assert seen == [(2, timestep + 1) for timestep in range(GRID_CODES)]
    torch.testing.assert_close(images, decode(pipe, torch.zeros(2, GRID_CODES, dtype=torch.long)))


# diffusers' own callback tests, `PipelineTesterMixin.test_callback_inputs` and `test_callback_cfg` in diffusers'
# tests/pipelines/test_pipelines_common.py (not in the diffusers wheel), reproduced here on the tiny pipeline: their
# dummy components and inputs, the same callbacks and the same assertions.


def dummy_inputs() -> dict:
    return {"prompt": "a red circle", "num_candidates": 2, "generator": torch.Generator().manual_seed(0)}


def test_diffusers_callback_inputs(pipe):
    parameters = inspect.signature(DallePipeline.__call__).parameters
    assert "callback_on_step_end" in parameters and "callback_on_step_end_tensor_inputs" in parameters

    def callback_inputs_subset(pipeline, i, t, callback_kwargs):
        assert all(name in pipeline._callback_tensor_inputs for name in callback_kwargs)
        return callback_kwargs

    def callback_inputs_all(pipeline, i, t, callback_kwargs):
        assert all(name in callback_kwargs for name in pipeline._callback_tensor_inputs)
        assert all(name in pipeline._callback_tensor_inputs for name in callback_kwargs)
        return callback_kwargs

    def callback_inputs_change_tensor(pipeline, i, t, callback_kwargs):
        if i == pipeline.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    for callback, tensor_inputs in [
        (callback_inputs_subset, ["latents"]),
        (callback_inputs_all, pipe._callback_tensor_inputs),
        (callback_inputs_change_tensor, pipe._callback_tensor_inputs),
    ]:
        output = pipe(
            **dummy_inputs(),
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=tensor_inputs,
            output_type="latent",
        )[0]
    assert output.abs().sum() == 0


def test_diffusers_callback_cfg(pipe):
    parameters = inspect.signature(DallePipeline.__call__).parameters
    assert "guidance_scale" in parameters and hasattr(pipe, "_callback_tensor_inputs")

    def callback_increase_guidance(pipeline, i, t, callback_kwargs):
        pipeline._guidance_scale += 1.0
        return callback_kwargs

    inputs = {**dummy_inputs(), "guidance_scale": 2.0}
    pipe(
        **inputs,
        callback_on_step_end=callback_increase_guidance,
        callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
    )
    # Once per decode step of the whole call: one chunk of 2 candidates, 16 codes each.
    assert pipe.num_timesteps == GRID_CODES
    assert pipe.guidance_scale == inputs["guidance_scale"] + pipe.num_timesteps
    # Over several chunks too: the steps of all chunks.
    pipe(**inputs, candidate_batch_size=1, callback_on_step_end=callback_increase_guidance)
    assert pipe.num_timesteps == 2 * GRID_CODES
    assert pipe.guidance_scale == inputs["guidance_scale"] + pipe.num_timesteps


def test_a_callback_sets_the_guidance_of_the_steps_that_follow(pipe):
    seen = []

    def guidance_off(pipeline, step, timestep, callback_kwargs):
        pipeline._guidance_scale = 1.0  # as diffusers' CFG cutoff callbacks do (with 0)
        seen.append({name: tensor.clone() for name, tensor in callback_kwargs.items()})
        return callback_kwargs

    candidates(
        pipe, n=2, guidance_scale=4.0, callback_on_step_end=guidance_off,
        callback_on_step_end_tensor_inputs=["codes", "logits"],
    )  # fmt: skip
    text_ids = pipe.tokenizer.encode_captions(["a red circle"] * 2, max_length=8)

    def conditional_logits(codes):
        with torch.no_grad():
            logits = pipe.transformer(pipe.transformer.prepare_input_ids(text_ids, codes)).logits
        return logits[:, -1, pipe.transformer.config.text_vocab_size :]

    # The first code was drawn with guidance; from the second on, from the conditional logits alone.
    assert not torch.allclose(seen[0]["logits"], conditional_logits(seen[0]["codes"][:, :0]), atol=1e-3)
    for step in (1, 7):
        codes = seen[step]["codes"]
        torch.testing.assert_close(seen[step]["logits"], conditional_logits(codes[:, :-1]), atol=1e-5, rtol=1e-5)


def compiled_components(pipe) -> dict:
    return {
        "tokenizer": pipe.tokenizer,
        "transformer": torch.compile(pipe.transformer, backend="eager", dynamic=True),
        "vae": torch.compile(pipe.vae, backend="eager"),
    }


def test_components_wrapped_by_torch_compile(pipe, tmp_path):
    compiled = DallePipeline(**compiled_components(pipe))
    # Decoding through the compiled dVAE (the compiled transformer's decode steps run in the slow test below).
    with_compiled_vae = DallePipeline(tokenizer=pipe.tokenizer, transformer=pipe.transformer, vae=compiled.vae)
    torch.testing.assert_close(candidates(with_compiled_vae, n=2), candidates(pipe, n=2))
    # Saved as the modules they wrap: the same folder as the plain pipeline's.
    compiled.save_pretrained(tmp_path / "compiled")
    pipe.save_pretrained(tmp_path / "plain")
    model_index, plain_index = (
        json.loads((tmp_path / d / "model_index.json").read_text()) for d in ("compiled", "plain")
    )
    assert model_index["transformer"][1] == "DalleForImageGeneration" and model_index["vae"][1] == "DalleVAE"
    assert {k: v for k, v in model_index.items() if k != "_name_or_path"} == {
        k: v for k, v in plain_index.items() if k != "_name_or_path"
    }
    loaded = DallePipeline.from_pretrained(tmp_path / "compiled")
    torch.testing.assert_close(candidates(loaded, n=2), candidates(pipe, n=2))
    with pytest.raises(ValueError, match="`vae` must be a DalleVAE or DalleVQGAN, got OptimizedModule"):
        DallePipeline(tokenizer=pipe.tokenizer, transformer=pipe.transformer, vae=torch.compile(pipe.transformer))


@pytest.mark.slow
def test_generation_through_a_compiled_transformer(pipe):
    torch.testing.assert_close(candidates(DallePipeline(**compiled_components(pipe)), n=2), candidates(pipe, n=2))


def test_call_docstring_example_runs(tmp_path, monkeypatch):
    doc = DallePipeline.__call__.__doc__
    assert "Examples:" in doc and ">>> pipe = DallePipeline.from_pretrained(hf_dalle.DEMO_MODEL_DIR)" in doc
    monkeypatch.chdir(tmp_path)
    example = doctest.DocTestParser().get_doctest(
        doc.replace("```py", "").replace("```", ""), {}, "DallePipeline.__call__", None, 0
    )
    runner = doctest.DocTestRunner()
    runner.run(example)
    assert runner.summarize(verbose=False).failed == 0
    assert len(example.examples) >= 4
    assert (tmp_path / "red_circle_above_blue_square.png").is_file()


def test_model_card_templates_are_in_the_wheel(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "source"
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(repo / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("hf_dalle-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "installed")
    templates = {p.name for p in (repo / "src" / "hf_dalle" / "model_cards").glob("*.md")}
    assert templates and {f"hf_dalle/model_cards/{name}" for name in templates} <= names
    # Rendered from the wheel's own copy of the package, not from the checkout.
    script = (
        "import hf_dalle, sys; from huggingface_hub import ModelCardData; from hf_dalle.hub_utils import "
        "render_model_card; assert hf_dalle.__file__.startswith(sys.argv[1]), hf_dalle.__file__; "
        "card = render_model_card('dalle_vae', ModelCardData(), model_name='A dVAE', repo_id='x/y', "
        "config=hf_dalle.DalleVAEConfig(), encoder_parameters=1, decoder_parameters=2); print(card.text)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "installed")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "installed")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "# A dVAE" in result.stdout
