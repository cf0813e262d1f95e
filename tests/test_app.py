"""The Gradio web demo (hf_dalle.app) on a tiny random pipeline: the generate function's values and errors, and the
app served on 127.0.0.1 (queue, progress, bad requests) through gradio_client; browser test: test_app_browser.py."""

import runpy
import socket
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
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


def test_served_app_queues_reports_progress_and_survives_bad_requests(pipe):
    demo = app.create_demo(pipe, candidate_batch_size=8)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    forward_threads = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: forward_threads.append(threading.get_ident()))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        # Bad requests are answered with the message, and the server goes on serving.
        with pytest.raises(AppError, match="Please enter a caption"):
            client.predict("", "", 8, 2, 1.0, 1.0, 0, 0, api_name="/generate")
        with pytest.raises(AppError, match="greater than maximum value 512"):  # Gradio's own slider check
            client.predict("a red circle", "", 100_000, 2, 1.0, 1.0, 0, 0, api_name="/generate")

        # Live progress: the pipeline's tqdm bar, one step per sampled code (4 chunks of 8 x 16 codes).
        job = client.submit("a red circle", "", 32, 3, 1.0, 1.0, 0, 0, api_name="/generate")
        second = client.submit("a blue square", "", 32, 2, 1.0, 1.0, 0, 0, api_name="/generate")
        progress = set()
        while not (job.done() and second.done()):
            for unit in job.status().progress_data or []:
                progress.add((unit.index, unit.length, unit.unit))
            time.sleep(0.005)
        gallery, status = job.result()
        assert len(gallery) == 3 and gallery[0]["caption"].startswith("#1 · CLIP score ")
        assert status.startswith("Sampled 32 candidates in ")
        assert len(second.result()[0]) == 2
        assert progress and {length for _, length, _ in progress} == {4 * 16}
        assert {unit for _, _, unit in progress} == {"steps"}

        # One request at a time on the one pipeline: the two requests' forwards never interleave.
        switches = sum(a != b for a, b in zip(forward_threads, forward_threads[1:]))
        assert len(forward_threads) == 2 * 4 * 16 and switches <= 1
    finally:
        hook.remove()
        demo.close()


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
