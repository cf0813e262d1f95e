"""The hf_dalle web demo: a Gradio app around `DallePipeline`.

`hf-dalle serve [--model DIR_OR_HUB_ID]` runs it; `create_demo(pipeline_or_path)` builds it; `hf_dalle.app.demo` is
the app on the bundled demo model (or on the pipeline named by the `HF_DALLE_MODEL` environment variable), built on
first access, for a Hugging Face Space's `app.py`.

One pipeline stays in memory and requests queue for it one at a time; each request samples its candidates
`candidate_batch_size` at a time and keeps only the best images, so even `num_candidates=512` runs in bounded memory.
"""

import os
import time

import gradio as gr
import torch

from .data import RELATIONS, caption_split, parse_caption, split_captions
from .pipelines import DallePipeline


MAX_CANDIDATES = 512  # the paper's N
MAX_IMAGES = 16
MAX_CANDIDATE_BATCH_SIZE = 16
MAX_QUEUE_SIZE = 16
MAX_SEED = 2**32 - 1

_SPLIT_NOTES = {
    "train": "a training caption of the demo world",
    "held_out_pairing": "never seen in training: a held-out (color, shape) pairing, drawn zero-shot",
    "held_out_combination": "never seen in training: two objects never drawn together, drawn zero-shot",
    "held_out_arrangement": "never seen in training: a held-out arrangement of two objects, drawn zero-shot",
}


def example_captions() -> list[str]:
    """Clickable examples from the demo world's grammar: training captions first, then one of each held-out kind."""
    examples = split_captions("train", 1)[::5]
    two_objects = split_captions("train", 2)
    for index, relation in enumerate(RELATIONS):  # one per relation, spread over the colors and shapes
        with_relation = [caption for caption in two_objects if parse_caption(caption).relation == relation]
        examples.append(with_relation[len(with_relation) * (index + 1) // (len(RELATIONS) + 1)])
    for split in ("held_out_pairing", "held_out_combination", "held_out_arrangement"):
        examples.append(split_captions(split, 1 if split == "held_out_pairing" else 2)[0])
    return examples


def _caption_note(prompt: str) -> str:
    """Which part of the demo world a caption belongs to, or an empty string for captions outside its grammar."""
    try:
        return _SPLIT_NOTES[caption_split(parse_caption(prompt))]
    except ValueError:
        return ""


def _check_integer(name: str, value, minimum: int, maximum: int) -> int:
    """`value` as an int within [minimum, maximum], else a `gr.Error` shown in the page."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not number.is_integer() or not minimum <= number <= maximum:
        raise gr.Error(f"{name} must be a whole number between {minimum} and {maximum}, got {value!r}.")
    return int(number)


def generate_images(
    pipeline: DallePipeline,
    prompt: str,
    negative_prompt: str = "",
    num_candidates: int = 16,
    num_images: int = 4,
    guidance_scale: float | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    candidate_batch_size: int = MAX_CANDIDATE_BATCH_SIZE,
    max_candidates: int = MAX_CANDIDATES,
) -> tuple[list[tuple], str]:
    """
    Run `pipeline` for one caption with the page's settings.

    Returns the gallery (`(image, caption)` pairs, best first, captioned with rank and CLIP score) and a status line.
    Bad input raises `gr.Error`, which Gradio shows in the page while the server keeps serving.
    """
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Please enter a caption, e.g. 'a red circle above a blue square'.")
    num_candidates = _check_integer("Number of candidates", num_candidates, 1, max_candidates)
    num_images = _check_integer("Number of images", num_images, 1, min(MAX_IMAGES, num_candidates))
    top_k = _check_integer("Top-k", top_k, 0, pipeline.transformer.config.image_vocab_size)
    seed = _check_integer("Seed", seed, 0, MAX_SEED)
    # One generator per candidate, seeded seed + index (as `hf-dalle generate`): the same seed redraws the same images.
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_candidates)]
    start = time.perf_counter()
    try:
        output = pipeline(
            prompt,
            negative_prompt=(negative_prompt or "").strip() or None,
            num_candidates=num_candidates,
            num_images_per_prompt=num_images,
            temperature=float(temperature),
            top_k=top_k or None,
            guidance_scale=None if guidance_scale is None else float(guidance_scale),  # None: the pipeline's default
            generator=generators,
            candidate_batch_size=min(candidate_batch_size, num_candidates),
        )
    except ValueError as error:  # the pipeline's own input checks (temperature, guidance scale, ...)
        raise gr.Error(str(error)) from error
    seconds = time.perf_counter() - start

    if output.scores is None:
        gallery = [(image, f"#{rank} (no CLIP model: not reranked)") for rank, image in enumerate(output.images, 1)]
    else:
        gallery = [
            (image, f"#{rank} · CLIP score {score:.3f}")
            for rank, (image, score) in enumerate(zip(output.images, output.scores), 1)
        ]
    kept = "best by CLIP score" if output.scores is not None else "first (no CLIP model to rerank)"
    status = f"Sampled {num_candidates} candidates in {seconds:.1f} s; showing the {num_images} {kept}."
    note = _caption_note(prompt)
    return gallery, f"{status}\n\n*{prompt}*: {note}." if note else status


def _load(pipeline_or_path) -> tuple[DallePipeline, str]:
    if isinstance(pipeline_or_path, DallePipeline):
        return pipeline_or_path, pipeline_or_path.name_or_path or "a DallePipeline"
    from .cli import _load_pipeline  # the bundled demo model by default, with a clear error if it is missing

    pipeline = _load_pipeline(None if pipeline_or_path is None else str(pipeline_or_path))
    if torch.cuda.is_available():
        pipeline.to("cuda")
    return pipeline, pipeline.name_or_path


def create_demo(
    pipeline_or_path: DallePipeline | str | os.PathLike | None = None,
    *,
    max_candidates: int = MAX_CANDIDATES,
    candidate_batch_size: int = MAX_CANDIDATE_BATCH_SIZE,
) -> gr.Blocks:
    """
    The Gradio app for a `DallePipeline`, or a pipeline directory / Hub id to load (default: the bundled demo model).

    Requests queue (`MAX_QUEUE_SIZE` waiting at most) and run one at a time on the one pipeline; each samples at most
    `candidate_batch_size` candidates at once and at most `max_candidates` in all.
    """
    if not 1 <= max_candidates <= MAX_CANDIDATES:
        raise ValueError(f"`max_candidates` must be between 1 and {MAX_CANDIDATES}, got {max_candidates}.")
    if not 1 <= candidate_batch_size <= MAX_CANDIDATE_BATCH_SIZE:
        raise ValueError(
            f"`candidate_batch_size` must be between 1 and {MAX_CANDIDATE_BATCH_SIZE}, got {candidate_batch_size}."
        )
    pipeline, model_name = _load(pipeline_or_path)
    config = pipeline.transformer.config
    reranking = "reranked by CLIP" if pipeline.clip_model is not None else "not reranked (the pipeline has no CLIP)"

    def generate(
        prompt, negative_prompt, num_candidates, num_images, guidance_scale, temperature, top_k, seed,
        progress=gr.Progress(track_tqdm=True),  # follows the pipeline's tqdm bar: one step per sampled code
    ):  # fmt: skip
        return generate_images(
            pipeline, prompt, negative_prompt, num_candidates, num_images, guidance_scale, temperature, top_k, seed,
            candidate_batch_size=candidate_batch_size, max_candidates=max_candidates,
        )  # fmt: skip

    with gr.Blocks(title="hf_dalle: DALL-E web demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# hf_dalle: DALL-E web demo\n"
            f"Model: `{model_name}` ({pipeline.image_size}x{pipeline.image_size} images, {config.num_hidden_layers} "
            f"layers). The transformer samples `N` candidate images for the caption, one code at a time; they are "
            f"{reranking} and the best are shown first."
        )
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Caption", placeholder="a red circle above a blue square", elem_id="prompt")
                negative_prompt = gr.Textbox(
                    label="Negative caption", info="Steered away from when guidance scale > 1.",
                    elem_id="negative-prompt",
                )  # fmt: skip
                with gr.Row():
                    num_candidates = gr.Slider(
                        1, max_candidates, value=min(16, max_candidates), step=1, label="Candidates (N)",
                        elem_id="num-candidates",
                    )  # fmt: skip
                    num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images shown", elem_id="num-images")
                with gr.Accordion("Sampling", open=False):
                    guidance_scale = gr.Slider(
                        1.0, 10.0, value=pipeline.config.default_guidance_scale, step=0.5,
                        label="Guidance scale (1 = off)",
                    )  # fmt: skip
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                    top_k = gr.Slider(0, config.image_vocab_size, value=0, step=1, label="Top-k (0 = all codes)")
                    seed = gr.Number(
                        value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed (candidate i uses seed + i)"
                    )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Best candidates", columns=4, format="png", elem_id="gallery")
                status = gr.Markdown(elem_id="status")
        examples = example_captions()
        gr.Examples(
            examples=[[caption] for caption in examples],
            inputs=[prompt],
            label="Demo-world captions (those marked 'unseen' never appear in training)",
            example_labels=[c if caption_split(c) == "train" else f"{c} (unseen)" for c in examples],
        )
        inputs = [prompt, negative_prompt, num_candidates, num_images, guidance_scale, temperature, top_k, seed]
        gr.on([button.click, prompt.submit], generate, inputs=inputs, outputs=[gallery, status], api_name="generate")
    # One pipeline in memory: requests run one at a time, the rest wait in a bounded queue.
    demo.queue(max_size=MAX_QUEUE_SIZE, default_concurrency_limit=1)
    return demo


def __getattr__(name: str):
    # `from hf_dalle.app import demo` (a Space's app.py) builds the app on first access, not on import.
    if name == "demo":
        globals()["demo"] = create_demo(os.environ.get("HF_DALLE_MODEL"))
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_CANDIDATES",
    "MAX_CANDIDATE_BATCH_SIZE",
    "MAX_IMAGES",
    "create_demo",
    "example_captions",
    "generate_images",
]
