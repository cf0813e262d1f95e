"""scripts/evaluate_shapes.py and scripts/package_demo_model.py on a tiny pipeline: the reported numbers are the
judge's verdicts on what the pipeline draws, and packaging installs the pipeline with its card and evaluated settings."""

import json

import numpy as np
import pytest
import torch
from training_utils import load_script

from hf_dalle import DallePipeline
from hf_dalle.data import best_of_k_accuracy, judge_image, split_captions
from hf_dalle.testing_utils import make_tiny_pipeline


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as scripts/train_demo.sh leaves it: pipeline, both evaluations, stage timings."""
    run = tmp_path_factory.mktemp("run")
    make_tiny_pipeline().save_pretrained(run / "pipeline")
    evaluate = load_script("evaluate_shapes")
    evaluate.main(
        ["--model", str(run / "pipeline"), "--output_dir", str(run / "eval"), "--num_candidates", "4",
         "--best_of", "2", "4", "--captions_per_group", "2", "--guidance_scale", "1.5", "--device", "cpu"]
    )  # fmt: skip
    evaluate.main(["--vae", str(run / "pipeline"), "--output_dir", str(run / "vae_eval"), "--num_images", "8"])
    stages = {"dVAE": 120, "CLIP": 600, "CLIP, hard negatives": 60, "waiting for CLIP": 60, "transformer": 300}
    (run / "stage_seconds.tsv").write_text("".join(f"{name}\t{seconds}\n" for name, seconds in stages.items()))
    return run


def test_pipeline_evaluation_reports_the_judges_verdicts(run_dir):
    report = json.loads((run_dir / "eval" / "evaluation.json").read_text())
    results = report["results"]
    assert list(results)[:4] == [
        "seen, one object", "seen, two objects", "held-out pairing, one object", "held-out, two objects"
    ]  # fmt: skip
    assert results["seen, one object"]["captions"] == len(split_captions("train", num_objects=1))
    assert results["seen, two objects"]["captions"] == 2
    # Recompute one group independently: the same seeds, every candidate judged, reranked by CLIP score.
    pipe = DallePipeline.from_pretrained(run_dir / "pipeline")
    n1, best2 = [], []
    for caption in split_captions("held_out_pairing", num_objects=1):
        out = pipe(
            caption, num_candidates=4, num_images_per_prompt=4, guidance_scale=1.5,
            generator=[torch.Generator().manual_seed(i) for i in range(4)],
        )  # fmt: skip
        verdicts = [judge_image(image, caption).correct for image in out.images]
        n1.append(np.mean(verdicts))
        best2.append(best_of_k_accuracy(verdicts, 2))
    row = results["held-out pairing, one object"]
    assert row["N=1"] == pytest.approx(np.mean(n1))
    assert row["best of 2"] == pytest.approx(np.mean(best2))
    assert set(row) == {"captions", "N=1", "best of 2", "best of 4", "any of 2"}
    assert (run_dir / "eval" / "samples.png").is_file()
    assert "| held-out, two objects | 2 |" in (run_dir / "eval" / "evaluation.md").read_text()


def test_vae_evaluation_covers_every_split(run_dir):
    results = json.loads((run_dir / "vae_eval" / "evaluation.json").read_text())["results"]
    assert list(results) == ["train", "held-out-pairing", "held-out-combination", "held-out-arrangement"]
    for row in results.values():
        assert row["images"] == 8
        assert row["correct"] <= min(row["colors"], row["shapes"])


def test_package_installs_the_pipeline_with_its_card_and_settings(run_dir, tmp_path):
    package = load_script("package_demo_model")
    output = tmp_path / "demo_model"
    output.mkdir()
    (output / "stale.txt").write_text("from an older demo model")
    package.main(["--run_dir", str(run_dir), "--output_dir", str(output)])
    assert not (output / "stale.txt").exists()  # replaced whole
    assert json.loads((output / "model_index.json").read_text())["default_guidance_scale"] == 1.5
    loaded = DallePipeline.from_pretrained(output)
    assert loaded.config.default_guidance_scale == 1.5
    card = (output / "README.md").read_text()
    assert "| held-out, two objects | 2 |" in card  # the evaluation table
    assert "| held-out-pairing | 8 |" in card  # the dVAE table
    assert "| transformer | 5.0 |" in card  # the stage timings
    assert "(`make train-demo`, 8 minutes)" in card  # wall time: the CLIP stages ran beside the others
    assert "red square, green triangle, blue circle" in card
    assert (output / "samples.png").is_file() and (output / "evaluation.json").is_file()
    assert not list(output.rglob("*non_ema*"))


def test_package_refuses_a_model_over_the_size_limit(run_dir, tmp_path):
    package = load_script("package_demo_model")
    output = tmp_path / "demo_model"
    with pytest.raises(SystemExit, match="more than --max_megabytes 0.01"):
        package.main(["--run_dir", str(run_dir), "--output_dir", str(output), "--max_megabytes", "0.01"])
    assert not output.exists()
    assert not list(tmp_path.glob(".demo_model*"))  # no temporary folder left behind
