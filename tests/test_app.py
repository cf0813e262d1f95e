"""The Gradio web demo (hf_dalle.app) on a tiny random pipeline: the generate function's values and errors, and the
app served on 127.0.0.1 (queue, progress, bad requests) through gradio_client; browser test: test_app_browser.py."""

import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from dalle_mega_utils import make_tiny_dalle_bart_pipeline
from gradio_client import Client
from gradio_client.exceptions import AppError

from hf_dalle import app
from hf_dalle.cli import build_parser
from hf_dalle.data import RELATIONS, caption_split, parse_caption
from hf_dalle.testing_utils import make_tiny_pipeline


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: one intra-op thread is fastest, and on a shared CPU several threads spin against each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_generate_images_returns_the_pipelines_best_images_with_their_scores(pipe):
    gallery, status = app.generate_images(pipe, "a red circle", "", num_candidates=8, num_images=3, seed=5)

    expected = pipe(
        "a red circle",
        num_candidates=8,
        num_images_per_prompt=3,
        generator=[torch.Generator().manual_seed(5 + i) for i in range(8)],
    )
    assert len(gallery) == 3
    for (image, caption), expected_image, score, rank in zip(gallery, expected.images, expected.scores, (1, 2, 3)):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected_image))
        assert caption == f"#{rank} · CLIP score {score:.3f}"
    assert expected.scores == sorted(expected.scores, reverse=True)
    assert status.startswith("Sampled 8 candidates in ")
    assert "showing the 3 best by CLIP score" in status
    assert "a training caption of the demo world" in status


def test_status_says_which_words_the_model_does_not_know(pipe):
    _, status = app.generate_images(pipe, "a red zyzzyva", "", num_candidates=2, num_images=1)
    assert "**Note:** Words the model's tokenizer does not know" in status and "'zyzzyva'" in status
    _, status = app.generate_images(pipe, "a red circle", "", num_candidates=2, num_images=1)
    assert "Note:" not in status


def test_generate_images_settings_reach_the_pipeline(pipe):
    """Seed, temperature, top-k, guidance and the negative caption change the images exactly as in the pipeline."""
    settings = {"negative_prompt": "a blue square", "guidance_scale": 3.0, "temperature": 0.7, "top_k": 5, "seed": 11}
    gallery, _ = app.generate_images(pipe, "a green triangle", num_candidates=4, num_images=2, **settings)
    expected = pipe(
        "a green triangle",
        negative_prompt="a blue square",
        num_candidates=4,
        num_images_per_prompt=2,
        guidance_scale=3.0,
        temperature=0.7,
        top_k=5,
        generator=[torch.Generator().manual_seed(11 + i) for i in range(4)],
    ).images
    for (image, _), expected_image in zip(gallery, expected):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected_image))
    # Seeds 100..103: none of the candidates above.
    settings["seed"] = 100
    other_seeds, _ = app.generate_images(pipe, "a green triangle", num_candidates=4, num_images=2, **settings)
    assert not np.array_equal(np.asarray(other_seeds[0][0]), np.asarray(gallery[0][0]))


def test_generate_images_without_clip_says_so():
    pipe = make_tiny_pipeline(with_clip=False)
    gallery, status = app.generate_images(pipe, "a red circle", num_candidates=4, num_images=2)
    assert [caption for _, caption in gallery] == [f"#{rank} (no CLIP model: not reranked)" for rank in (1, 2)]
    assert "showing the 2 first (no CLIP model to rerank)" in status


def test_candidates_are_sampled_in_bounded_batches(pipe):
    batch_sizes = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        app.generate_images(pipe, "a red circle", num_candidates=40, num_images=2, candidate_batch_size=16)
    finally:
        hook.remove()
    assert max(batch_sizes) == 16
    assert sorted(set(batch_sizes)) == [8, 16]  # 16 + 16 + 8 candidates


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prompt": "   "}, "Please enter a caption"),
        ({"num_candidates": 513}, "Number of candidates must be a whole number between 1 and 512, got 513"),
        ({"num_candidates": 0}, "Number of candidates must be a whole number between 1 and 512, got 0"),
        ({"num_candidates": 2.5}, "Number of candidates must be a whole number between 1 and 512, got 2.5"),
        ({"num_candidates": "many"}, "Number of candidates must be a whole number between 1 and 512, got 'many'"),
        ({"num_candidates": None}, "Number of candidates must be a whole number"),
        ({"num_candidates": 4, "num_images": 5}, "Number of images must be a whole number between 1 and 4, got 5"),
        ({"num_images": 17, "num_candidates": 64}, "Number of images must be a whole number between 1 and 16, got 17"),
        ({"top_k": 33}, "Top-k must be a whole number between 0 and 32, got 33"),
        ({"seed": -1}, "Seed must be a whole number between 0 and 4294967295, got -1"),
        ({"temperature": 0.0}, "`temperature` must be a finite number > 0, got 0.0"),  # the pipeline's own check
        ({"guidance_scale": 0.5}, "`guidance_scale` must be a finite number >= 1"),
    ],
)
def test_bad_input_raises_a_message_for_the_page(pipe, overrides, message):
    kwargs = {**{"prompt": "a red circle", "negative_prompt": "", "num_candidates": 4, "num_images": 2}, **overrides}
    with pytest.raises(gr.Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        app.generate_images(pipe, **kwargs)


def test_example_captions_cover_the_grammar():
    examples = app.example_captions()
    parsed = [parse_caption(caption) for caption in examples]  # all in the grammar
    assert {caption_split(caption) for caption in examples} == {
        "train", "held_out_pairing", "held_out_combination", "held_out_arrangement",
    }  # fmt: skip
    assert {p.relation for p in parsed if p.relation} == set(RELATIONS)
    assert any(len(p.objects) == 1 for p in parsed)
    assert len(set(examples)) == len(examples)


def test_create_demo_rejects_unbounded_settings(pipe):
    with pytest.raises(ValueError, match="`max_candidates` must be between 1 and 512, got 1000"):
        app.create_demo(pipe, max_candidates=1000)
    with pytest.raises(ValueError, match="`candidate_batch_size` must be between 1 and 16, got 64"):
        app.create_demo(pipe, candidate_batch_size=64)
    with pytest.raises(ValueError, match="`max_requests_per_client` must be a positive integer, got 0"):
        app.create_demo(pipe, max_requests_per_client=0)
    with pytest.raises(ValueError, match="`max_request_seconds` must be > 0, got 0"):
        app.create_demo(pipe, max_request_seconds=0)


def test_served_app_queues_reports_progress_and_survives_bad_requests(pipe, monkeypatch):
    demo = app.create_demo(pipe, candidate_batch_size=8, max_requests_per_client=2)  # two requests of one client
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    batches = []  # the caption of each batch of candidates, in the order they are sampled
    generate_progressively = type(pipe).generate_progressively

    def recording(self, prompt, **kwargs):
        for progress in generate_progressively(self, prompt, **kwargs):
            if progress.output is None and progress.codes is None:  # after a batch (not a decode step in it)
                batches.append(prompt)
            yield progress

    monkeypatch.setattr(type(pipe), "generate_progressively", recording)
    # Each code takes a few ms more: the progress between two batches' updates lasts long enough to be seen on a busy
    # machine (the status shows the batch updates in between).
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: time.sleep(0.005))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        # Bad requests are answered with the message, and the server goes on serving.
        with pytest.raises(AppError, match="Please enter a caption"):
            client.predict("", "", 8, 2, 1.0, 1.0, 0, 0, api_name="/generate")
        # Gradio's own slider check, made when the request is posted (by the validator's preprocessing): refused there.
        out_of_range = _post(f"http://127.0.0.1:{port}/gradio_api", "a red circle", num_candidates=100_000)
        assert out_of_range.status_code == 400 and "greater than maximum value 512" in out_of_range.text

        # Live progress: the pipeline's tqdm bar, one step per sampled code (4 batches of 8 candidates x 16 codes), over
        # the whole request.
        job = client.submit("a red circle", "", 32, 3, 1.0, 1.0, 0, 0, api_name="/generate")
        second = client.submit("a blue square", "", 32, 2, 1.0, 1.0, 0, 0, api_name="/generate")
        progress = set()
        while not (job.done() and second.done()):
            for unit in [*(job.status().progress_data or []), *(second.status().progress_data or [])]:
                progress.add((unit.index, unit.length, unit.unit))
            time.sleep(0.005)
        gallery, previews, status = job.result()
        assert len(gallery) == 3 and gallery[0]["caption"].startswith("#1 · CLIP score ")
        assert previews == ""  # the previews made way for the result
        # Before it, the previews of each batch's candidates as their codes arrived: inline images, not cached files.
        shown = [update[1] for update in job.outputs()[:-1] if isinstance(update[1], str)]
        assert len(shown) == 4 * 3 and all(html.count('src="data:image/png;base64,') == 3 for html in shown)
        assert status.startswith("Sampled 32 candidates in ")
        assert len(second.result()[0]) == 2
        assert progress and {length for _, length, _ in progress} == {4 * 16}
        assert {unit for _, _, unit in progress} == {"code"}  # the pipeline's bar counts image codes

        # One request at a time on the one pipeline: the two requests' batches never interleave (the two posts may
        # reach the queue in either order).
        red, blue = ["a red circle"] * 4, ["a blue square"] * 4
        assert batches in (red + blue, blue + red), batches
    finally:
        hook.remove()
        demo.close()


def test_candidates_sampled_in_batches_are_those_of_one_call(pipe):
    """The app samples batch by batch (so that it can stop): the candidates and their ranking are those of one
    pipeline call, each candidate drawn by its own generator."""
    gallery, status = app.generate_images(pipe, "a red circle", num_candidates=40, num_images=5, seed=3)
    expected = pipe(
        "a red circle",
        num_candidates=40,
        num_images_per_prompt=5,
        generator=[torch.Generator().manual_seed(3 + i) for i in range(40)],
    )
    for (image, caption), expected_image, score in zip(gallery, expected.images, expected.scores):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected_image))
        assert caption.endswith(f"CLIP score {score:.3f}")
    assert status.startswith("Sampled 40 candidates in ")


def test_limits_of_one_request(pipe):
    huge = "a red circle " * 80_000  # about 1 MB
    with pytest.raises(
        gr.Error, match=f"The caption is {len(huge)} characters long; at most 1000 are accepted"
    ) as error:
        app.generate_images(pipe, huge, num_candidates=4, num_images=2)
    assert len(str(error.value)) < 200  # the message (and so the log) does not repeat the caption
    with pytest.raises(gr.Error, match="The negative caption is 1001 characters long"):
        app.generate_images(pipe, "a red circle", "x" * 1001, num_candidates=4, num_images=2)
    with pytest.raises(gr.Error, match="Seed must be a whole number") as error:
        app.generate_images(pipe, "a red circle", seed="9" * 1_000_000 + "x")
    assert len(str(error.value)) < 200
    # The time limit: after the first batch of 16 (previewed row by row) the request stops and shows the best so far.
    steps = list(
        app.generate_images_progressively(pipe, "a red circle", num_candidates=40, num_images=2, max_seconds=0)
    )
    gallery, _, status = steps[-1]
    assert [_kind(step) for step in steps] == ["preview"] * 3 + ["gallery"] and len(gallery) == 2
    assert status.startswith("Sampled 16 candidates in ") and "Stopped at the time limit of 0 s per request" in status
    # Without a limit: the previews of each batch, an update after each batch but the last, then the gallery.
    steps = list(app.generate_images_progressively(pipe, "a red circle", num_candidates=40, num_images=2))
    batch = ["preview"] * 3
    assert [_kind(step) for step in steps] == [*batch, "status", *batch, "status", *batch, "gallery"]
    assert steps[3][2].startswith("Sampled 16 of 40 candidates in ")


def _kind(step) -> str:
    gallery, previews, _ = step
    return "gallery" if gallery is not None else "preview" if previews is not None else "status"


def test_previews_redraw_the_batch_after_every_row_of_codes(pipe):
    """The previews are the batch's first candidates as far as they are drawn, after each of the grid's rows but the
    last (then the batch is scored): the codes of the one pipeline call, the rows not yet sampled gray."""
    steps = list(
        app.generate_images_progressively(
            pipe, "a red circle", num_candidates=6, num_images=2, seed=3, candidate_batch_size=4
        )
    )
    codes = pipe(
        "a red circle", num_candidates=6, num_images_per_prompt=6, output_type="latent",
        generator=[torch.Generator().manual_seed(3 + i) for i in range(6)],
    )  # fmt: skip
    in_sampling_order = codes.images[torch.tensor(codes.candidate_indices).argsort()].flatten(1)
    previews = [previews for _, previews, _ in steps if previews is not None]
    grid = pipe.transformer.config.image_grid_size
    expected = [(first, rows) for first in (0, 4) for rows in range(1, grid)]  # two batches: 4 + 2 candidates
    assert len(previews) == len(expected)
    for gallery, (first, rows) in zip(previews, expected):
        images = pipe.image_processor.postprocess(
            pipe.decode_partial(in_sampling_order[first : first + 2, : rows * grid]), output_type="pil"
        )
        assert [caption for _, caption in gallery] == [
            f"candidate {first + i + 1}: {rows * grid} of {grid * grid} codes" for i in range(2)
        ]
        for (image, _), expected_image in zip(gallery, images):
            np.testing.assert_array_equal(np.asarray(image), np.asarray(expected_image))
    # The rows not yet sampled are gray: the first preview is gray below its first row, the last above it is not.
    first_preview = np.asarray(previews[0][0][0])
    row_height = first_preview.shape[0] // grid
    assert (first_preview[row_height:] == 128).all() and not (first_preview[:row_height] == 128).all()


def test_dalle_mega_in_the_app_samples_with_its_own_defaults(tmp_path):
    """A converted DALL·E Mega: the page starts at its guidance 16 and top-k 256 (sliders wide enough), and a request
    that leaves them to the pipeline gets the pipeline's own images."""
    mega = make_tiny_dalle_bart_pipeline(tmp_path)
    gallery, _ = app.generate_images(mega, "a red circle", num_candidates=3, num_images=2, seed=1)
    expected = mega(
        "a red circle", num_candidates=3, num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(1 + i) for i in range(3)],
    )  # fmt: skip
    for (image, _), expected_image in zip(gallery, expected.images):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected_image))
    demo = app.create_demo(mega)
    sliders = {block.label: block for block in demo.blocks.values() if isinstance(block, gr.Slider)}
    guidance, top_k = sliders["Guidance scale (1 = off)"], sliders["Top-k (0 = all codes)"]
    assert (guidance.value, top_k.value) == (16.0, 256) and guidance.maximum >= 16


def test_client_limiter(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: now[0])
    limiter = app.ClientLimiter(max_requests=2, slot_seconds=60)
    limiter.admit("10.0.0.1")
    limiter.admit("10.0.0.1")
    limiter.admit("10.0.0.2")  # another client has its own slots
    with pytest.raises(gr.Error, match="You already have 2 request\\(s\\) waiting or running; at most 2 per client"):
        limiter.admit("10.0.0.1")
    limiter.release("10.0.0.1")
    limiter.admit("10.0.0.1")
    assert limiter.in_use("10.0.0.1") == 2
    now[0] += 61  # slots of requests that never ran (dropped from the queue) expire
    limiter.admit("10.0.0.1")
    assert limiter.in_use("10.0.0.1") == 1


def test_demo_settings_bound_the_cache_and_uploads(pipe):
    demo = app.create_demo(pipe)
    assert demo.delete_cache == (app.CACHE_SECONDS, app.CACHE_SECONDS)
    assert app.LAUNCH_LIMITS == {"max_file_size": app.MAX_UPLOAD_SIZE}
    textboxes = [block for block in demo.blocks.values() if isinstance(block, gr.Textbox)]
    assert [box.max_length for box in textboxes] == [app.MAX_PROMPT_CHARS] * 2
    assert (Path(__file__).resolve().parent.parent / "app.py").read_text().count("launch_demo(demo)") == 1


def _serve(demo, trusted_proxies=None) -> str:
    port = _free_port()
    app.launch_demo(
        demo, trusted_proxies, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    return f"http://127.0.0.1:{port}/gradio_api"


@pytest.mark.parametrize(
    "trusted_proxies, environment, counted",
    [
        (None, None, ["127.0.0.1"] * 3),  # uvicorn alone would believe the header from 127.0.0.1
        ([], "127.0.0.1", ["127.0.0.1"] * 3),
        (["127.0.0.1"], None, ["203.0.113.1", "203.0.113.2", "203.0.113.3"]),
        (None, "127.0.0.0/8", ["203.0.113.1", "203.0.113.2", "203.0.113.3"]),  # named by the operator
    ],
)
def test_forwarded_headers_are_believed_only_from_the_named_proxies(pipe, monkeypatch, trusted_proxies, environment,
                                                                    counted):  # fmt: skip
    """A client that sends a new X-Forwarded-For with each request must not get a new slot each time."""
    if environment is None:
        monkeypatch.delenv(app.FORWARDED_ALLOW_IPS, raising=False)
    else:
        monkeypatch.setenv(app.FORWARDED_ALLOW_IPS, environment)
    demo = app.create_demo(pipe)
    clients = []

    def refuse(client):  # record who the limiter counts, and run nothing
        clients.append(client)
        raise gr.Error("refused for the test")

    monkeypatch.setattr(demo.client_limiter, "admit", refuse)
    base = _serve(demo, trusted_proxies)
    try:
        for index in range(1, 4):
            response = httpx.post(
                f"{base}/call/generate", headers={"X-Forwarded-For": f"203.0.113.{index}"},
                json={"data": ["a red circle", "", 4, 2, 1.0, 1.0, 0, 0]},
            )  # fmt: skip
            assert response.status_code == 422
    finally:
        demo.close()
    assert clients == counted
    assert os.environ.get(app.FORWARDED_ALLOW_IPS) == environment  # the process's environment left as it was


def test_a_trusted_proxy_that_is_no_address_is_refused(pipe, monkeypatch):
    launched = []
    demo = app.create_demo(pipe)
    monkeypatch.setattr(demo, "launch", lambda **kwargs: launched.append(kwargs))
    with pytest.raises(ValueError, match=r"must be an IP address or network .* got 'proxy.example'"):
        app.launch_demo(demo, ["10.0.0.2", "proxy.example"])
    assert not launched
    parser = build_parser()
    args = parser.parse_args(["serve", "--trusted-proxy", "10.0.0.2", "--trusted-proxy", "10.1.0.0/16"])
    assert args.trusted_proxy == ["10.0.0.2", "10.1.0.0/16"]
    # The command line, as a user runs it: refused before the model is loaded, with the message and no traceback.
    command = [sys.executable, "-m", "hf_dalle.cli", "serve", "--model", "/no/such/model", "--trusted-proxy", "x.y"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "hf-dalle serve: error: A trusted proxy must be an IP address or network" in result.stderr
    help_text = subprocess.run([*command[:4], "--help"], capture_output=True, text=True, timeout=300).stdout
    assert "--trusted-proxy ADDRESS" in help_text and "X-Forwarded-For" in help_text


def _post(base: str, prompt: str, num_candidates: int = 4) -> httpx.Response:
    return httpx.post(f"{base}/call/generate", json={"data": [prompt, "", num_candidates, 2, 1.0, 1.0, 0, 0]})


def _read_until(base: str, event_id: str, events: tuple[str, ...]) -> str:
    with httpx.stream("GET", f"{base}/call/generate/{event_id}", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("event: ") and line[len("event: ") :] in events:
                return line[len("event: ") :]
    raise AssertionError("the stream ended without " + " or ".join(events))


def test_served_app_refuses_at_the_door_and_stops_when_the_client_goes_away(pipe):
    demo = app.create_demo(pipe, candidate_batch_size=8)
    forwards = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    base = _serve(demo)
    try:
        refused = _post(base, "x" * 1001)
        assert refused.status_code == 422 and "at most 1000 are accepted" in refused.text
        # A second request of the same client while the first waits or runs is refused when posted.
        first = _post(base, "a red circle", num_candidates=256)  # 32 batches of 8
        second = _post(base, "a blue square")
        assert first.status_code == 200 and second.status_code == 422
        assert "at most 1 per client" in second.text and demo.client_limiter.in_use("127.0.0.1") == 1
        # The client reads the first update and goes away: sampling stops at the next batch, the slot is freed.
        assert _read_until(base, first.json()["event_id"], ("generating",)) == "generating"
        deadline = time.monotonic() + 30
        while demo.client_limiter.in_use("127.0.0.1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert demo.client_limiter.in_use("127.0.0.1") == 0
        time.sleep(1.0)
        assert len(forwards) <= 3 * 16  # at most 3 of the 32 batches (16 codes each) were sampled
        done = _post(base, "a blue square")
        assert _read_until(base, done.json()["event_id"], ("complete", "error")) == "complete"
        upload = httpx.post(f"{base}/upload", files={"files": ("big.bin", b"0" * 2_000_000)})
        assert upload.status_code == 413
    finally:
        hook.remove()
        demo.close()


@pytest.mark.slow
def test_served_app_under_bounded_loopback_load(pipe, monkeypatch, capfd):
    """A few dozen hostile requests over loopback: 1 MB captions, floods of fire-and-forget posts, clients that leave
    mid-request. Each is refused at once or stopped; the server then answers a normal request promptly, no slot is
    left taken, the log stays small, and the gallery images leave Gradio's cache."""
    monkeypatch.setattr(app, "CACHE_SECONDS", 2)
    demo = app.create_demo(pipe, candidate_batch_size=8)
    base = _serve(demo)
    start = time.monotonic()
    try:
        huge = "a red circle " * 80_000
        statuses = [_post(base, huge).status_code for _ in range(10)]
        assert statuses == [422] * 10
        accepted, refused = [], 0
        for _ in range(3):  # three rounds: a flood of 8 posts, the one admitted is then abandoned mid-request
            responses = [_post(base, "a red circle", num_candidates=512) for _ in range(8)]
            accepted += [r.json()["event_id"] for r in responses if r.status_code == 200]
            refused += sum(r.status_code == 422 for r in responses)
            _read_until(base, accepted[-1], ("generating",))
            deadline = time.monotonic() + 30
            while demo.client_limiter.in_use("127.0.0.1") and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(accepted) == 3 and refused == 21
        assert demo.client_limiter.in_use("127.0.0.1") == 0
        asked = time.monotonic()
        done = _post(base, "a blue square", num_candidates=8)
        assert _read_until(base, done.json()["event_id"], ("complete",)) == "complete"
        assert time.monotonic() - asked < 30  # not stuck behind the abandoned 512-candidate requests
        cache = Path(demo.GRADIO_CACHE)
        written = [p for p in cache.rglob("*.png") if p.stat().st_mtime >= time.time() - (time.monotonic() - start)]
        assert written  # the galleries were cached ...
        time.sleep(5)
        assert not [p for p in written if p.exists()]  # ... and deleted CACHE_SECONDS later
        assert time.monotonic() - start < 180
    finally:
        demo.close()
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 100_000  # 1 MB captions are not logged


def test_space_app_file_builds_the_demo_on_hf_dalle_model(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path / "pipe")
    monkeypatch.setenv("HF_DALLE_MODEL", str(tmp_path / "pipe"))
    assert "demo" not in vars(app)  # importing hf_dalle.app builds nothing
    try:
        # The repo's app.py, as a Space runs it but without launching (`__name__` is not "__main__").
        demo = runpy.run_path(str(Path(__file__).resolve().parent.parent / "app.py"))["demo"]
        assert isinstance(demo, gr.Blocks) and app.demo is demo  # built once, on first access
        headers = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown) and block.value]
        assert f"Model: `{tmp_path / 'pipe'}` (32x32 images, 2 layers)" in headers[0]
    finally:
        vars(app).pop("demo", None)


def test_serve_arguments():
    args = build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port) == (None, "127.0.0.1", 7860)
    args = build_parser().parse_args(["serve", "--model", "user/repo", "--host", "0.0.0.0", "--port", "8000"])
    assert (args.model, args.host, args.port) == ("user/repo", "0.0.0.0", 8000)
