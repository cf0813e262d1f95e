"""The hf_dalle web demo: a Gradio app around `DallePipeline`.

`hf-dalle serve [--model DIR_OR_HUB_ID]` runs it; `create_demo(pipeline_or_path)` builds it; `hf_dalle.app.demo` is
the app on the bundled demo model (or on the pipeline named by the `HF_DALLE_MODEL` environment variable), built on
first access, for a Hugging Face Space's `app.py`.

One pipeline stays in memory and requests queue for it one at a time; each request samples its candidates
`candidate_batch_size` at a time and keeps only the best images, so even `num_candidates=512` runs in bounded memory.
While a batch is sampled, previews of its first candidates are redrawn after every row of codes (as min-dalle's demo
shows DALL·E Mega's images grow).

Limits, so that no client can monopolise the one pipeline: captions of at most `MAX_PROMPT_CHARS` characters; at most
`max_candidates` candidates and `max_request_seconds` of sampling per request (then the best so far are shown);
`max_requests_per_client` requests queued or running per client address (more are refused when posted); a request
whose client went away stops at its next batch of candidates; `MAX_QUEUE_SIZE` requests waiting in all; uploads of at
most `MAX_UPLOAD_SIZE` (the app takes none; Gradio's upload route is open); the images Gradio caches for the
galleries deleted after `CACHE_SECONDS`. [`launch_demo`] serves it with these limits, and counts each client by the
address that connects unless the operator names the reverse proxies whose `X-Forwarded-For` to believe.
"""

import base64
import contextlib
import html
import io
import ipaddress
import os
import reprlib
import threading
import time
from collections.abc import Iterator, Sequence

import gradio as gr
import torch

from .data import RELATIONS, caption_split, parse_caption, split_captions
from .demo import load_pipeline
from .pipelines import DallePipeline, DallePipelineProgress


MAX_CANDIDATES = 512  # the paper's N
MAX_IMAGES = 16
MAX_CANDIDATE_BATCH_SIZE = 16
MAX_QUEUE_SIZE = 16
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1000  # far more than the transformer reads (captions are truncated to its text positions)
MAX_REQUEST_SECONDS = 600.0  # create_demo(max_request_seconds=...) for a tighter bound
MAX_REQUESTS_PER_CLIENT = 1
# A request refused or dropped before it ran (its client went away while it waited) frees its client's slot at the
# latest after this long.
CLIENT_SLOT_SECONDS = 900.0
MAX_UPLOAD_SIZE = "1mb"
CACHE_SECONDS = 1800  # gallery images in Gradio's cache are deleted this long after they were written
# For `demo.launch(**LAUNCH_LIMITS)` ([`launch_demo`]): launch() is where Gradio takes them.
LAUNCH_LIMITS = {"max_file_size": MAX_UPLOAD_SIZE}
# uvicorn's setting (read when Gradio's launch() builds the server) of the addresses whose X-Forwarded-For it believes.
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40  # bad values are quoted in messages, never 1 MB of them
_short_repr = _SHORT.repr

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
        raise gr.Error(f"{name} must be a whole number between {minimum} and {maximum}, got {_short_repr(value)}.")
    return int(number)


def _check_caption(name: str, value) -> str:
    text = "" if value is None else value
    if not isinstance(text, str):
        raise gr.Error(f"{name} must be text, got {_short_repr(value)}.")
    if len(text) > MAX_PROMPT_CHARS:
        raise gr.Error(f"{name} is {len(text)} characters long; at most {MAX_PROMPT_CHARS} are accepted.")
    return text.strip()


class ClientLimiter:
    """At most `max_requests` requests per client (address) admitted and not yet finished. A slot is taken when a
    request is posted (`admit`, Gradio's validator, before the request queues) and freed when it finishes
    (`release`), or after `slot_seconds` if it never ran."""

    def __init__(self, max_requests: int = MAX_REQUESTS_PER_CLIENT, slot_seconds: float = CLIENT_SLOT_SECONDS):
        self.max_requests, self.slot_seconds = max_requests, slot_seconds
        self._slots: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            slots = [taken for taken in self._slots.get(client, []) if now - taken < self.slot_seconds]
            if len(slots) >= self.max_requests:
                raise gr.Error(
                    f"You already have {len(slots)} request(s) waiting or running; at most {self.max_requests} per "
                    "client. Try again when it has finished."
                )
            self._slots[client] = [*slots, now]

    def release(self, client: str) -> None:
        with self._lock:
            slots = self._slots.get(client, [])
            if slots:
                slots.pop(0)
            if not slots:
                self._slots.pop(client, None)

    def in_use(self, client: str) -> int:
        with self._lock:
            return len(self._slots.get(client, []))


def _client(request: gr.Request | None) -> str | None:
    # The address uvicorn reports: the one that connects, or that of X-Forwarded-For from a proxy named to
    # launch_demo (behind a proxy not named, all users share the proxy's limit).
    return getattr(getattr(request, "client", None), "host", None)


def generate_images_progressively(
    pipeline: DallePipeline,
    prompt: str,
    negative_prompt: str = "",
    num_candidates: int = 16,
    num_images: int = 4,
    guidance_scale: float | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    candidate_batch_size: int = MAX_CANDIDATE_BATCH_SIZE,
    max_candidates: int = MAX_CANDIDATES,
    max_seconds: float = MAX_REQUEST_SECONDS,
) -> Iterator[tuple[list[tuple] | None, list[tuple] | None, str]]:
    """
    Run `pipeline` for one caption with the page's settings, `candidate_batch_size` candidates at a time (one
    `pipeline.generate_progressively` call). Yields `(gallery, previews, status)`: while it samples, `(None, previews,
    status)` after every row of codes of a batch (the batch's first `num_images` candidates so far as `(image,
    caption)` pairs, `pipeline.decode_partial`: the rows not yet sampled are gray) and `(None, None, status)` after
    each batch but the last; finally `(gallery, None, status)`: the gallery is `(image, caption)` pairs, best first,
    captioned with rank and CLIP score. Gradio stops iterating when the client
    goes away, so the remaining codes are not sampled; after `max_seconds` no further batch is begun and the best
    candidates so far are shown. `guidance_scale` and `top_k` (0: all codes) default to the pipeline's (DALL·E Mega:
    16 and 256).

    Bad input raises `gr.Error`, which Gradio shows in the page while the server keeps serving.
    """
    prompt = _check_caption("The caption", prompt)
    negative_prompt = _check_caption("The negative caption", negative_prompt)
    if not prompt:
        raise gr.Error("Please enter a caption, e.g. 'a red circle above a blue square'.")
    num_candidates = _check_integer("Number of candidates", num_candidates, 1, max_candidates)
    num_images = _check_integer("Number of images", num_images, 1, min(MAX_IMAGES, num_candidates))
    if top_k is not None:
        top_k = _check_integer("Top-k", top_k, 0, pipeline.transformer.config.image_vocab_size)
    seed = _check_integer("Seed", seed, 0, MAX_SEED)
    # One generator per candidate, seeded seed + index (as `hf-dalle generate`): the same seed redraws the same images,
    # whichever batch a candidate is sampled in.
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_candidates)]
    grid = pipeline.transformer.config.image_grid_size
    start = time.perf_counter()
    steps = pipeline.generate_progressively(
        prompt,
        negative_prompt=negative_prompt or None,
        num_candidates=num_candidates,
        num_images_per_prompt=num_images,
        temperature=float(temperature),
        top_k=top_k,
        guidance_scale=None if guidance_scale is None else float(guidance_scale),  # None: the pipeline's default
        generator=generators,
        candidate_batch_size=candidate_batch_size,
    )
    with contextlib.closing(steps):  # closed with this generator (the client went away): no more batches are sampled
        try:
            for progress in steps:
                seconds = time.perf_counter() - start
                if progress.codes is not None:
                    if progress.codes.shape[1] % grid == 0:  # a row of codes done: redraw the previews
                        yield (
                            None,
                            _previews(pipeline, progress, num_images),
                            (
                                f"Sampled {progress.num_sampled} of {num_candidates} candidates in {seconds:.1f} s; "
                                f"{progress.codes.shape[1]} of {grid * grid} codes of the next..."
                            ),
                        )
                    continue
                if progress.output is not None or progress.num_sampled == num_candidates:
                    continue
                if seconds > max_seconds:
                    pipeline._interrupt = True  # no further batch: the pipeline returns the best so far
                    continue
                yield (
                    None,
                    None,
                    f"Sampled {progress.num_sampled} of {num_candidates} candidates in {seconds:.1f} s...",
                )
        except ValueError as error:  # the pipeline's own input checks (temperature, guidance scale, ...)
            raise gr.Error(str(error)) from error
    output, sampled = progress.output, progress.num_sampled
    if output.scores is None:
        gallery = [(image, f"#{rank} (no CLIP model: not reranked)") for rank, image in enumerate(output.images, 1)]
    else:
        ranked = enumerate(zip(output.images, output.scores), 1)
        gallery = [(image, f"#{rank} · CLIP score {score:.3f}") for rank, (image, score) in ranked]
    kept = "best by CLIP score" if output.scores is not None else "first (no CLIP model to rerank)"
    status = f"Sampled {sampled} candidates in {seconds:.1f} s; showing the {len(gallery)} {kept}."
    if sampled < num_candidates:
        status += f" Stopped at the time limit of {max_seconds:g} s per request, before {num_candidates}."
    if output.prompt_warnings[0] is not None:  # words the model does not know, or text it does not read
        status += f"\n\n**Note:** {output.prompt_warnings[0]}"
    note = _caption_note(prompt)
    yield gallery, None, f"{status}\n\n*{prompt}*: {note}." if note else status


def _previews(pipeline: DallePipeline, progress: DallePipelineProgress, num_images: int) -> list[tuple]:
    """The first `num_images` candidates of the batch being sampled as far as they are drawn, captioned."""
    codes = progress.codes[:num_images]
    images = pipeline.image_processor.postprocess(pipeline.decode_partial(codes).float().cpu(), output_type="pil")
    done = f"{codes.shape[1]} of {pipeline.transformer.config.image_seq_length} codes"
    return [(image, f"candidate {i + 1}: {done}") for image, i in zip(images, progress.candidate_index.tolist())]


def _previews_html(previews: list[tuple]) -> str:
    """Previews as inline images (`data:` URLs): Gradio does not delete the cached files of a generator's intermediate
    outputs (only the final ones'), so previews never become files."""
    figures = []
    for image, caption in previews:
        png = io.BytesIO()
        image.save(png, format="PNG")
        source = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
        figures.append(
            f'<figure style="display:inline-block;margin:4px"><img src="{source}" alt="{html.escape(caption)}" '
            f'width="{image.width}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    return "".join(figures)


def generate_images(pipeline: DallePipeline, prompt: str, *args, **kwargs) -> tuple[list[tuple], str]:
    """`generate_images_progressively` run to the end: the gallery and the status line."""
    *_, (gallery, _, status) = generate_images_progressively(pipeline, prompt, *args, **kwargs)
    return gallery, status


def _load(pipeline_or_path) -> tuple[DallePipeline, str]:
    if isinstance(pipeline_or_path, DallePipeline):
        return pipeline_or_path, pipeline_or_path.name_or_path or "a DallePipeline"
    # Default: the demo model, on the best device in the precision it computes fast (hf_dalle.device_utils).
    pipeline = load_pipeline(None if pipeline_or_path is None else str(pipeline_or_path))
    return pipeline, pipeline.name_or_path


def create_demo(
    pipeline_or_path: DallePipeline | str | os.PathLike | None = None,
    *,
    max_candidates: int = MAX_CANDIDATES,
    candidate_batch_size: int = MAX_CANDIDATE_BATCH_SIZE,
    max_requests_per_client: int = MAX_REQUESTS_PER_CLIENT,
    max_request_seconds: float = MAX_REQUEST_SECONDS,
) -> gr.Blocks:
    """
    The Gradio app for a `DallePipeline`, or a pipeline directory / Hub id to load (default: the bundled demo model).

    Requests queue (`MAX_QUEUE_SIZE` waiting at most) and run one at a time on the one pipeline; each samples at most
    `candidate_batch_size` candidates at once and at most `max_candidates` in all; a client (address) has at most
    `max_requests_per_client` requests waiting or running; a request samples no more batches after
    `max_request_seconds`. See the module docstring for the other limits.
    """
    if not max_request_seconds > 0:
        raise ValueError(f"`max_request_seconds` must be > 0, got {max_request_seconds!r}.")
    if not isinstance(max_requests_per_client, int) or max_requests_per_client < 1:
        raise ValueError(f"`max_requests_per_client` must be a positive integer, got {max_requests_per_client!r}.")
    if not 1 <= max_candidates <= MAX_CANDIDATES:
        raise ValueError(f"`max_candidates` must be between 1 and {MAX_CANDIDATES}, got {max_candidates}.")
    if not 1 <= candidate_batch_size <= MAX_CANDIDATE_BATCH_SIZE:
        raise ValueError(
            f"`candidate_batch_size` must be between 1 and {MAX_CANDIDATE_BATCH_SIZE}, got {candidate_batch_size}."
        )
    pipeline, model_name = _load(pipeline_or_path)
    config = pipeline.transformer.config
    reranking = "reranked by CLIP" if pipeline.clip_model is not None else "not reranked (the pipeline has no CLIP)"

    limiter = ClientLimiter(max_requests_per_client)

    def admit(
        prompt, negative_prompt, num_candidates, num_images, guidance_scale, temperature, top_k, seed,
        request: gr.Request,
    ):  # fmt: skip
        # Gradio's validator: runs when a request is posted, before it queues; an invalid input refuses it there.
        problems = [None] * len(inputs)
        for index, (name, value) in enumerate((("The caption", prompt), ("The negative caption", negative_prompt))):
            try:
                _check_caption(name, value)
            except gr.Error as error:
                problems[index] = error.message
        client = _client(request)
        if not any(problems) and client is not None:
            try:
                limiter.admit(client)
            except gr.Error as error:
                problems[0] = error.message
        return [gr.validate(problem is None, problem or "") for problem in problems]

    def generate(
        prompt, negative_prompt, num_candidates, num_images, guidance_scale, temperature, top_k, seed,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),  # follows the pipeline's tqdm bar: one step per sampled code
    ):  # fmt: skip
        client = _client(request)
        try:
            for gallery, previews, message in generate_images_progressively(
                pipeline, prompt, negative_prompt, num_candidates, num_images, guidance_scale, temperature, top_k,
                seed, candidate_batch_size=candidate_batch_size, max_candidates=max_candidates,
                max_seconds=max_request_seconds,
            ):  # fmt: skip
                if gallery is not None:  # the result: the previews make way for it
                    yield gallery, "", message
                else:  # between two batches the last previews stay
                    yield None, gr.skip() if previews is None else _previews_html(previews), message
        finally:  # also when Gradio closes the generator: the client cancelled or went away
            if client is not None:
                limiter.release(client)

    with gr.Blocks(
        title="hf_dalle: DALL-E web demo", analytics_enabled=False, delete_cache=(CACHE_SECONDS, CACHE_SECONDS)
    ) as demo:
        gr.Markdown(
            "# hf_dalle: DALL-E web demo\n"
            f"Model: `{model_name}` ({pipeline.image_size}x{pipeline.image_size} images, {config.num_hidden_layers} "
            f"layers). The transformer samples `N` candidate images for the caption, one code at a time; they are "
            f"{reranking} and the best are shown first."
        )
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(
                    label="Caption", placeholder="a red circle above a blue square", elem_id="prompt",
                    max_length=MAX_PROMPT_CHARS,
                )  # fmt: skip
                negative_prompt = gr.Textbox(
                    label="Negative caption", info="Steered away from when guidance scale > 1.",
                    elem_id="negative-prompt", max_length=MAX_PROMPT_CHARS,
                )  # fmt: skip
                with gr.Row():
                    num_candidates = gr.Slider(
                        1, max_candidates, value=min(16, max_candidates), step=1, label="Candidates (N)",
                        elem_id="num-candidates",
                    )  # fmt: skip
                    num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images shown", elem_id="num-images")
                with gr.Accordion("Sampling", open=False):
                    default_guidance = pipeline.config.default_guidance_scale
                    guidance_scale = gr.Slider(
                        1.0, max(10.0, default_guidance), value=default_guidance, step=0.5,
                        label="Guidance scale (1 = off)",
                    )  # fmt: skip
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                    top_k = gr.Slider(
                        0, config.image_vocab_size, value=pipeline.transformer.generation_config.top_k or 0, step=1,
                        label="Top-k (0 = all codes)",
                    )  # fmt: skip
                    seed = gr.Number(
                        value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed (candidate i uses seed + i)"
                    )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                previews = gr.HTML(elem_id="previews")  # the candidates being sampled, as their codes arrive
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
        gr.on(
            [button.click, prompt.submit], generate, inputs=inputs, outputs=[gallery, previews, status], api_name="generate",
            validator=admit,
        )  # fmt: skip
    # One pipeline in memory: requests run one at a time, the rest wait in a bounded queue.
    demo.queue(max_size=MAX_QUEUE_SIZE, default_concurrency_limit=1)
    demo.client_limiter = limiter  # the per-client slots, for tests and monitoring
    return demo


def trusted_proxies_from(proxies: Sequence[str] | None) -> list[str]:
    """The reverse proxies whose `X-Forwarded-For` to believe (see [`launch_demo`]): `proxies`, or for `None` those the
    operator named in the `FORWARDED_ALLOW_IPS` environment variable (none if it is unset). A `ValueError` for an
    entry that is not an IP address or network or `"*"` (uvicorn would take it silently and never match it)."""
    if proxies is None:
        proxies = [proxy.strip() for proxy in os.environ.get(FORWARDED_ALLOW_IPS, "").split(",") if proxy.strip()]
    for proxy in proxies:
        if proxy != "*":
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"A trusted proxy must be an IP address or network (e.g. 10.0.0.2, 10.0.0.0/8) or '*', got "
                    f"{proxy!r}."
                ) from None
    return list(proxies)


def launch_demo(demo: gr.Blocks, trusted_proxies: Sequence[str] | None = None, **launch_kwargs):
    """
    `demo.launch(**LAUNCH_LIMITS, **launch_kwargs)`, with the per-client limit counting the address that connects.
    uvicorn (under Gradio's launch) would otherwise take the client's address from an `X-Forwarded-For` header sent
    from 127.0.0.1, so that any local process, or a local proxy that passes the header on, could name a new client
    with each request. The header is believed only from `trusted_proxies`: IP addresses or networks (`"10.0.0.0/8"`)
    of the reverse proxies in front, or `["*"]` for any; `None` takes those the operator named in the
    `FORWARDED_ALLOW_IPS` environment variable, and none if it is unset ([`trusted_proxies_from`]).
    """
    trusted_proxies = trusted_proxies_from(trusted_proxies)
    previous = os.environ.get(FORWARDED_ALLOW_IPS)
    os.environ[FORWARDED_ALLOW_IPS] = ",".join(trusted_proxies)  # "" trusts no address
    try:
        return demo.launch(**{**LAUNCH_LIMITS, **launch_kwargs})
    finally:  # read once, when the server was built: the process's environment is left as it was
        if previous is None:
            del os.environ[FORWARDED_ALLOW_IPS]
        else:
            os.environ[FORWARDED_ALLOW_IPS] = previous


def __getattr__(name: str):
    # `from hf_dalle.app import demo` (a Space's app.py) builds the app on first access, not on import.
    if name == "demo":
        globals()["demo"] = create_demo(os.environ.get("HF_DALLE_MODEL"))
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LAUNCH_LIMITS",
    "MAX_CANDIDATES",
    "MAX_CANDIDATE_BATCH_SIZE",
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_REQUESTS_PER_CLIENT",
    "MAX_REQUEST_SECONDS",
    "ClientLimiter",
    "create_demo",
    "example_captions",
    "generate_images",
    "generate_images_progressively",
    "launch_demo",
    "trusted_proxies_from",
]
