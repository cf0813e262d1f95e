"""scripts/evaluate.py: FID and IS through torchmetrics against their closed forms (injected feature extractors, since
the standard Inception cannot be downloaded here), CLIP score against the pipeline's own cosine, and the whole chain
(generate.py -> evaluate.py) on the demo world in the demo CLIP's image-embedding space."""

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_utils import load_script, training_environment  # noqa: F401 (autouse fixture)

from hf_dalle import DEMO_MODEL_DIR, DallePipeline
from hf_dalle.data import render_caption, split_captions


evaluate = load_script("evaluate")


def index_image(index: int, size: int = 8) -> Image.Image:
    """An image that carries `index` in its first pixel (PNG-safe)."""
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[0, 0, :2] = divmod(index, 256)
    return Image.fromarray(array)


class Lookup(torch.nn.Module):
    """The row of `table` of each image's index: features (or logits) of our choosing."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table, self.num_features = table, table.shape[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].long() * 256 + images[:, 1, 0, 0].long()]


def exact_gaussian_sample(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` points whose sample mean and (n - 1)-normalised covariance are exactly `mean` and `cov`."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / (n - 1))).T
    return mean + x @ torch.linalg.cholesky(cov).T


def sqrtm(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def test_fid_is_the_frechet_distance_of_the_two_gaussians():
    """d^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), for feature sets with known moments."""
    d, n = 5, 40
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    m1, m2 = rng.normal(size=d), rng.normal(size=d) + 1
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    table = torch.cat(
        [
            exact_gaussian_sample(torch.from_numpy(m), torch.from_numpy(s), n, seed)
            for m, s, seed in ((m1, s1, 1), (m2, s2, 2))
        ]
    )
    root = sqrtm(s1)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(root @ s2 @ root))
    results = evaluate.compute_metrics(
        [index_image(i) for i in range(n)], [(index_image(n + i), "x") for i in range(n)], [0], 8,
        fid_feature=Lookup(table), is_feature=None, batch_size=7,
    )  # fmt: skip
    assert results["num_reference_images"] == results["num_generated_images"] == n
    assert results["per_blur_radius"][0]["fid"] == pytest.approx(expected, rel=1e-6)
    assert results["clip_score"] is None and "inception_score" not in results["per_blur_radius"][0]


def test_inception_score_is_exp_of_the_mean_kl_to_the_marginal():
    n, classes = 30, 6
    logits = torch.randn(n, classes, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    p = logits.softmax(-1).numpy()
    expected = np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean())
    images = [(index_image(i), "x") for i in range(n)]
    results = evaluate.compute_metrics(
        [index_image(i) for i in range(n)], images, [0], 8, fid_feature=Lookup(logits),
        is_feature=Lookup(logits), inception_splits=1,
    )  # fmt: skip
    row = results["per_blur_radius"][0]
    assert row["inception_score"] == pytest.approx(expected, rel=1e-6)
    assert row["fid"] == pytest.approx(0, abs=1e-6)  # the same set on both sides
    one_hot = torch.eye(classes, dtype=torch.float64).repeat(5, 1) * 50  # every class equally often, certain
    results = evaluate.compute_metrics(
        [index_image(i) for i in range(n)], images, [0], 8, fid_feature=Lookup(one_hot), is_feature=Lookup(one_hot),
        inception_splits=1,
    )  # fmt: skip
    assert results["per_blur_radius"][0]["inception_score"] == pytest.approx(classes, rel=1e-6)


def test_each_blur_radius_blurs_both_sets():
    """The row of radius r is what radius 0 gives on images blurred beforehand; radii change the distance."""
    projection = torch.randn(3 * 32 * 32, 4, generator=torch.Generator().manual_seed(0))

    class PixelFeatures(torch.nn.Module):
        num_features = 4

        def forward(self, images):
            return images.flatten(1).double() @ projection.double()

    reference = [render_caption(c, seed=i, image_size=32) for i, c in enumerate(split_captions("train", 1) * 2)]
    generated = [(render_caption(c, seed=100 + i, image_size=32), c) for i, c in enumerate(split_captions("train", 1))]
    both = evaluate.compute_metrics(reference, generated, [0, 1.5], 32, fid_feature=PixelFeatures(), is_feature=None)
    blurred = evaluate.compute_metrics(
        evaluate.blurred(reference, 1.5), [(i, c) for i, c in zip(evaluate.blurred([g for g, _ in generated], 1.5), split_captions("train", 1))],
        [0], 32, fid_feature=PixelFeatures(), is_feature=None,
    )  # fmt: skip
    assert [row["blur_radius"] for row in both["per_blur_radius"]] == [0, 1.5]
    assert both["per_blur_radius"][1]["fid"] == pytest.approx(blurred["per_blur_radius"][0]["fid"], rel=1e-9)
    assert both["per_blur_radius"][1]["fid"] != pytest.approx(both["per_blur_radius"][0]["fid"], rel=1e-3)


@pytest.fixture(scope="module")
def demo_pipe():
    return DallePipeline.from_pretrained(DEMO_MODEL_DIR)


def test_clip_score_is_100_times_the_pipelines_cosine(demo_pipe):
    """torchmetrics' CLIPScore through ProjectedCLIP = 100 * the cosine the pipeline reranks by (here all > 0)."""
    captions = split_captions("train", 2)[:6]
    images = [render_caption(c, seed=i) for i, c in enumerate(captions)]
    model, processor = evaluate.load_clip(DEMO_MODEL_DIR)
    clip_score = evaluate.CLIPScore(model_name_or_path=lambda: (evaluate.ProjectedCLIP(model), processor))
    results = evaluate.compute_metrics(
        images, list(zip(images, captions)), [0], 64, fid_feature=evaluate.CLIPImageFeatures(model, processor),
        is_feature=None, clip_score=clip_score, batch_size=4,
    )  # fmt: skip
    pixels = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1) for i in images])
    cosines = demo_pipe.clip_scores(pixels, demo_pipe.clip_text_embeds(captions))
    assert (cosines > 0).all()
    assert results["clip_score"] == pytest.approx(100 * cosines.mean().item(), abs=1e-3)
    assert results["per_blur_radius"][0]["fid"] == pytest.approx(0, abs=1e-4)


def test_demo_world_chain_writes_the_report(tmp_path):
    """generate.py -> evaluate.py on the demo model, Frechet distance in the demo CLIP's embedding space: the demo
    model's drawings of two-object captions lie near the renderer's, far nearer than drawings of one-object captions
    do; report, table and plot are written."""
    captions = sorted(random.Random(0).sample(split_captions("train", 2), 24))
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    generate = load_script("generate")
    generate.main(["--captions", str(tmp_path / "captions.txt"), "--num_candidates", "1", "--candidate_batch_size",
                   "24", "--output_dir", str(tmp_path / "gen")])  # fmt: skip
    evaluate.main(
        ["--generated_dir", str(tmp_path / "gen"), "--reference_shapes", "--resolution", "64", "--blur_radii", "0",
         "1", "--features", "clip", "--features_model", DEMO_MODEL_DIR, "--clip_score_model", DEMO_MODEL_DIR,
         "--output_dir", str(tmp_path / "eval"), "--batch_size", "10"]
    )  # fmt: skip
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["generation"]["num_candidates"] == 1 and report["evaluation"]["select"] == "best"
    results = report["results"]
    assert results["num_generated_images"] == results["num_reference_images"] == 24
    assert [row["blur_radius"] for row in results["per_blur_radius"]] == [0, 1]
    assert results["clip_score"] > 50
    with Image.open(tmp_path / "eval" / "fid_vs_blur.png") as plot:
        assert plot.format == "PNG"
    assert f"| 1 | {results['per_blur_radius'][1]['fid']:.4g} |" in (tmp_path / "eval" / "evaluation.md").read_text()

    features = evaluate.CLIPImageFeatures(*evaluate.load_clip(DEMO_MODEL_DIR))
    reference = [render_caption(c, seed=i) for i, c in enumerate(captions)]
    one_object = [(render_caption(c, seed=i), c) for i, c in enumerate(split_captions("train", 1) * 2)]
    far = evaluate.compute_metrics(reference, one_object, [0], 64, fid_feature=features, is_feature=None)
    assert far["per_blur_radius"][0]["fid"] > 5 * results["per_blur_radius"][0]["fid"]


def test_select_first_needs_every_candidate_0(tmp_path):
    (tmp_path / "manifest.jsonl").write_text(
        json.dumps({"caption_index": 0, "caption": "a red circle", "rank": 0, "candidate": 3, "file": "x.png"}) + "\n"
    )
    with pytest.raises(ValueError, match="--select first: 1 captions have no image of candidate 0"):
        evaluate.read_manifest(tmp_path, "first")
    assert evaluate.read_manifest(tmp_path, "best")[0]["candidate"] == 3
    with pytest.raises(FileNotFoundError, match="no manifest.jsonl"):
        evaluate.read_manifest(tmp_path / "missing", "best")


def write_manifest(folder: Path, count: int) -> list[str]:
    """A generate.py manifest of `count` captions with one image each (index images); returns the files."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    files = [f"images/{index:06d}_0.png" for index in range(count)]
    for index, file in enumerate(files):
        index_image(index, size=16).save(folder / file)
    entries = [
        {"caption_index": i, "caption": "a red circle", "rank": 0, "candidate": 0, "file": file}
        for i, file in enumerate(files)
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return files


def test_inception_without_torch_fidelity_says_what_to_install(tmp_path, monkeypatch):
    write_manifest(tmp_path, 2)
    find_spec = evaluate.importlib.util.find_spec
    monkeypatch.setattr(
        evaluate.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_fidelity" else find_spec(name, *a),
    )
    with pytest.raises(SystemExit, match="needs torch-fidelity .* --features clip --features_model M"):
        evaluate.main(["--generated_dir", str(tmp_path), "--reference_shapes", "--output_dir", str(tmp_path / "out")])


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if evaluate.py reaches the metrics or loads a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the work started before the arguments were checked")

    monkeypatch.setattr(evaluate, "compute_metrics", refuse)
    monkeypatch.setattr(evaluate, "load_clip", refuse)


def clip_args(generated_dir: Path, output_dir: Path, *reference: str) -> list[str]:
    return [
        "--generated_dir", str(generated_dir), *(reference or ["--reference_shapes"]), "--features", "clip",
        "--features_model", DEMO_MODEL_DIR, "--resolution", "16", "--output_dir", str(output_dir),
    ]  # fmt: skip


def test_the_output_dir_and_the_image_counts_are_checked_before_any_work(tmp_path, no_work):
    write_manifest(tmp_path / "gen", 3)
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(SystemExit, match=r"error: --output_dir '.*file/eval' cannot be written to: Not a directory"):
        evaluate.main(clip_args(tmp_path / "gen", tmp_path / "file" / "eval"))
    write_manifest(tmp_path / "one", 1)
    with pytest.raises(
        SystemExit, match=r"error: --generated_dir .*one gives 1 image\(s\) with --select best; FID needs"
    ):
        evaluate.main(clip_args(tmp_path / "one", tmp_path / "eval"))
    (tmp_path / "references").mkdir()
    index_image(0).save(tmp_path / "references" / "0.png")
    with pytest.raises(SystemExit, match=r"error: --reference_dir .*references holds 1 images; FID needs at least 2"):
        evaluate.main(clip_args(tmp_path / "gen", tmp_path / "eval", "--reference_dir", str(tmp_path / "references")))
    with pytest.raises(SystemExit):  # argparse: --max_reference_images must be at least 2
        evaluate.main([*clip_args(tmp_path / "gen", tmp_path / "eval"), "--max_reference_images", "1"])


@pytest.mark.parametrize("which", ["reference", "generated"])
def test_an_image_that_does_not_decode_is_named(tmp_path, which):
    files = write_manifest(tmp_path / "gen", 3)
    references = tmp_path / "references"
    references.mkdir()
    for index in range(3):
        index_image(index, size=16).save(references / f"{index}.png")
    damaged = references / "1.png" if which == "reference" else tmp_path / "gen" / files[2]
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(damaged)
    damaged.write_bytes(damaged.read_bytes()[:300])  # a copy cut short
    with pytest.raises(SystemExit, match=rf"error: The {which} image {re.escape(str(damaged))} does not decode: "):
        evaluate.main(clip_args(tmp_path / "gen", tmp_path / "eval", "--reference_dir", str(references)))
    assert not (tmp_path / "eval" / "evaluation.json").exists()
