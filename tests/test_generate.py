"""scripts/generate.py: what it writes is what the pipeline draws for each candidate's seed, independent of batch size
and process count (2 CPU processes over gloo), resumable after a kill, refused into a folder of another job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_utils import REPO_ROOT, Interrupt, load_script, training_environment  # noqa: F401 (autouse fixture)

from hf_dalle import DallePipeline
from hf_dalle.testing_utils import make_tiny_pipeline


# Of one length for the tiny CLIP's tokenizer: its text pooling (eos id = pad id) depends on the padding of a batch.
CAPTIONS = ["a red circle", "a blue square", "a red triangle", "a red square", "a blue circle"]
generate = load_script("generate")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipeline")
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS[:2]) + "\n\n" + "\n".join(CAPTIONS[2:]) + "\n")  # a blank line is skipped
    return path


def job_args(pipeline_dir: Path, captions_file: Path, output_dir: Path, batch_size: int) -> list[str]:
    return [
        "--model", str(pipeline_dir), "--captions", str(captions_file), "--output_dir", str(output_dir),
        "--num_candidates", "4", "--num_images_per_prompt", "2", "--seed", "7", "--guidance_scale", "1.5",
        "--top_k", "20", "--candidate_batch_size", str(batch_size),
    ]  # fmt: skip


def read_job(output_dir: Path) -> tuple[list[dict], dict[str, bytes]]:
    manifest = [json.loads(line) for line in (output_dir / "manifest.jsonl").read_text().splitlines()]
    files = {p.name: p.read_bytes() for p in sorted((output_dir / "images").iterdir())}
    return manifest, files


def assert_same_job(a: Path, b: Path) -> None:
    (manifest_a, files_a), (manifest_b, files_b) = read_job(a), read_job(b)
    assert files_a == files_b
    # CLIP scores of the same image may differ in the last bits with the batch it was scored in.
    strip = [{k: v for k, v in e.items() if k != "clip_score"} for e in manifest_a]
    assert strip == [{k: v for k, v in e.items() if k != "clip_score"} for e in manifest_b]
    assert [e["clip_score"] for e in manifest_a] == pytest.approx([e["clip_score"] for e in manifest_b], abs=1e-5)


@pytest.fixture(scope="module")
def one_process_run(pipeline_dir, captions_file, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("one") / "run"
    assert generate.main(job_args(pipeline_dir, captions_file, output_dir, batch_size=3)) == 0
    return output_dir


def test_images_are_the_pipelines_best_candidates_for_their_seeds(one_process_run, pipeline_dir):
    """Each caption's files are what the pipeline returns for its candidates' seeds (the same reranking), and the
    manifest says which candidate, seed and score each one is."""
    manifest, files = read_job(one_process_run)
    assert len(manifest) == len(CAPTIONS) * 2 and len(files) == len(manifest)
    pipe = DallePipeline.from_pretrained(pipeline_dir)
    for index, caption in enumerate(CAPTIONS):
        seeds = [generate.candidate_seed(7, index, k) for k in range(4)]
        output = pipe(
            caption, num_candidates=4, num_images_per_prompt=2, guidance_scale=1.5, top_k=20,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        )  # fmt: skip
        entries = [e for e in manifest if e["caption_index"] == index]
        assert [e["rank"] for e in entries] == [0, 1]
        assert all(e["caption"] == caption and e["seed"] == seeds[e["candidate"]] for e in entries)
        assert [e["clip_score"] for e in entries] == pytest.approx(output.scores, abs=1e-5)
        for entry, expected in zip(entries, output.images):
            assert (np.asarray(Image.open(one_process_run / entry["file"])) == np.asarray(expected)).all()
    assert {e["source_index"] for e in manifest} == set(range(5))
    config = json.loads((one_process_run / "generation_config.json").read_text())
    assert config["num_candidates"] == 4 and config["num_images_per_prompt"] == 2 and config["num_captions"] == 5


def test_candidate_seeds_are_distinct_and_depend_only_on_their_indices():
    seeds = {generate.candidate_seed(s, c, k) for s in range(3) for c in range(20) for k in range(20)}
    assert len(seeds) == 3 * 20 * 20
    assert generate.candidate_seed(1, 2, 3) == generate.candidate_seed(1, 2, 3) != generate.candidate_seed(1, 3, 2)


def test_batch_size_does_not_change_the_output(one_process_run, pipeline_dir, captions_file, tmp_path):
    assert generate.main(job_args(pipeline_dir, captions_file, tmp_path / "run", batch_size=8)) == 0
    assert_same_job(one_process_run, tmp_path / "run")


def test_two_processes_write_what_one_process_writes(one_process_run, pipeline_dir, captions_file, tmp_path):
    """accelerate launch, 2 CPU processes over gloo, another batch size: the same files and manifest."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
        "--mixed_precision", "no", "--num_processes", "2", "--main_process_port", str(port), "scripts/generate.py",
        *job_args(pipeline_dir, captions_file, tmp_path / "run", batch_size=5),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert sorted(p.name for p in (tmp_path / "run" / "manifest.parts").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]
    parts = [(tmp_path / "run" / "manifest.parts" / f"rank-{r}.jsonl").read_text().splitlines() for r in (0, 1)]
    assert [len(p) for p in parts] == [3, 2]  # split_between_processes: 3 captions, then 2
    assert_same_job(one_process_run, tmp_path / "run")


def test_a_killed_run_resumes_where_it_stopped(one_process_run, pipeline_dir, captions_file, tmp_path, monkeypatch):
    """Killed while writing the 3rd caption (with half a manifest line left behind): the rerun generates only the
    captions without a record, and the result is the uninterrupted run's."""
    args = job_args(pipeline_dir, captions_file, tmp_path / "run", batch_size=4)
    write_caption, calls = generate.write_caption, []

    def killed_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupt("killed")
        return write_caption(*a, **k)

    monkeypatch.setattr(generate, "write_caption", killed_on_third)
    with pytest.raises(Interrupt):
        generate.main(args)
    monkeypatch.setattr(generate, "write_caption", write_caption)
    part = tmp_path / "run" / "manifest.parts" / "rank-0.jsonl"
    assert len(part.read_text().splitlines()) == 2 and not (tmp_path / "run" / "manifest.jsonl").exists()
    with open(part, "a") as file:
        file.write('{"caption_index": 4, "ima')  # a line cut short by the kill
    prompts = []
    call = DallePipeline.__call__

    def counting_call(self, prompt, *a, **k):
        prompts.extend(prompt)
        return call(self, prompt, *a, **k)

    monkeypatch.setattr(DallePipeline, "__call__", counting_call)
    assert generate.main(args) == 0
    assert sorted(prompts) == sorted(CAPTIONS[2:])  # each once: 4 candidates fill one batch of 4
    assert_same_job(one_process_run, tmp_path / "run")


def test_a_rerun_with_other_settings_is_refused(one_process_run, pipeline_dir, captions_file):
    args = job_args(pipeline_dir, captions_file, one_process_run, batch_size=3)
    with pytest.raises(SystemExit, match=r"other settings \(num_candidates"):
        generate.main([*args, "--num_candidates", "8"])


def test_damaged_progress_is_generated_again(one_process_run, pipeline_dir, captions_file, tmp_path, monkeypatch,
                                             caplog):  # fmt: skip
    """A finished caption whose PNG was deleted, and lines of the part file that are JSON but no record: their
    captions are generated again (with a warning), and the result is the undamaged run's."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(one_process_run, run)
    (run / "manifest.jsonl").unlink()
    (run / "images" / "000003_1.png").unlink()
    part = run / "manifest.parts" / "rank-0.jsonl"
    lines = part.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "images": "images/000001_0.png"})  # caption 1's record, damaged
    part.write_bytes("\n".join([*lines, "[1, 2]", '{"caption_index": 99}']).encode() + b"\n\xff\xfe\n")
    prompts = []
    call = DallePipeline.__call__

    def counting_call(self, prompt, *a, **k):
        prompts.extend(prompt)
        return call(self, prompt, *a, **k)

    monkeypatch.setattr(DallePipeline, "__call__", counting_call)
    with caplog.at_level("WARNING"):
        assert generate.main(job_args(pipeline_dir, captions_file, run, batch_size=3)) == 0
    assert sorted(prompts) == sorted([CAPTIONS[1], CAPTIONS[3]])
    assert "line 2 is not a caption's record" in caplog.text and "line 6 is not a caption's record" in caplog.text
    assert "['images/000003_1.png'] are missing: generated again" in caplog.text
    assert_same_job(one_process_run, run)


def test_a_damaged_settings_file_is_refused(one_process_run, pipeline_dir, captions_file, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(one_process_run, run)
    (run / "generation_config.json").write_text('{"model": ')
    with pytest.raises(SystemExit, match=r"generation_config.json is damaged \(not JSON: .*use another --output_dir"):
        generate.main(job_args(pipeline_dir, captions_file, run, batch_size=3))


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "c.jsonl",
            '{"caption": "a red circle"}\n{"caption": "a blue\n',
            r"c.jsonl, line 2: not JSON \(Unterminated string",
        ),
        (
            "c.jsonl",
            '{"caption": "a red circle"}\n"a blue square"\n',
            r"Caption 1 of .*c.jsonl is not an object with a 'caption' field: 'a blue square'",
        ),
        (
            "c.json",
            '{"annotations": ["a red circle"]}',
            r"Caption 0 of .*c.json is not an object with a 'caption' field",
        ),
        ("c.json", '{"annotations": {"caption": "a red circle"}}', r"c.json is not an MS-COCO captions file"),
        ("c.json", '{"annotations": [', r"c.json is not JSON: Expecting value"),
        ("c.txt", b"a red circle\n\xff\n", r"--captions .*c.txt is not UTF-8 text"),
    ],
    ids=["jsonl not json", "jsonl string", "coco strings", "coco dict", "coco not json", "not utf-8"],
)
def test_malformed_caption_files_name_the_file_and_line(pipeline_dir, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit, match=f"error: .*{message}"):
        generate.main(["--model", str(pipeline_dir), "--captions", str(path), "--output_dir", str(tmp_path / "out")])


def test_caption_sources(tmp_path):
    """.txt, .jsonl (--caption_column), MS-COCO annotations and datasets folders give the same items; --max_captions
    samples in source order; an empty caption is refused by its index."""
    import datasets

    def load(*argv):
        return generate.load_captions(generate.parse_args([*argv, "--output_dir", str(tmp_path / "out")]))

    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"text": c, "image_id": i}) + "\n" for i, c in enumerate(CAPTIONS))
    )
    coco = {
        "images": [],
        "annotations": [{"image_id": i, "id": 10 + i, "caption": c + " \n"} for i, c in enumerate(CAPTIONS)],
    }
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    datasets.Dataset.from_dict({"text": CAPTIONS}).save_to_disk(str(tmp_path / "ds"))
    expected = [{"caption": c, "source_index": i, "image_id": i} for i, c in enumerate(CAPTIONS)]
    assert load("--captions", str(tmp_path / "c.jsonl"), "--caption_column", "text") == expected
    assert load("--captions", str(tmp_path / "captions_val2014.json")) == expected
    plain = [{"caption": c, "source_index": i} for i, c in enumerate(CAPTIONS)]
    assert load("--dataset_name", str(tmp_path / "ds"), "--caption_column", "text") == plain
    sample = load("--captions", str(tmp_path / "c.jsonl"), "--caption_column", "text", "--max_captions", "3")
    assert len(sample) == 3 and [s["source_index"] for s in sample] == sorted(s["source_index"] for s in sample)
    (tmp_path / "bad.jsonl").write_text('{"text": "a red circle"}\n{"text": " "}\n')
    with pytest.raises(ValueError, match=r"Caption 1 of .*bad.jsonl is empty or missing \(field 'text'\)"):
        load("--captions", str(tmp_path / "bad.jsonl"), "--caption_column", "text")
    with pytest.raises(ValueError, match="no 'annotations' list"):
        (tmp_path / "x.json").write_text("[]")
        load("--captions", str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="not a column"):
        load("--dataset_name", str(tmp_path / "ds"))
