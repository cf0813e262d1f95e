#!/usr/bin/env python
"""Generate CLIP-reranked images for a whole caption set, on one process or many, resumably.

    python scripts/generate.py --captions captions.txt --num_candidates 16 --output_dir runs/gen
    accelerate launch --num_processes 8 scripts/generate.py --model PIPELINE --captions captions_val2014.json \\
        --max_captions 30000 --num_candidates 512 --output_dir runs/coco

Captions come from a .txt file (one caption a line), a .jsonl file (one object a line, the caption under
--caption_column), an MS-COCO annotations file (`captions_val2014.json`: its "annotations") or a dataset
(--dataset_name, a Hub id or a `save_to_disk` folder, with --caption_column). --max_captions keeps a random sample of
that many (seeded by --seed, in source order).

For every caption, --num_candidates candidates are sampled, each with its own generator seeded from (--seed, caption
index, candidate index), scored against the caption by the pipeline's CLIP, and the best --num_images_per_prompt are
written to OUTPUT_DIR/images/{caption index:06d}_{rank}.png. So the files do not depend on the number of processes
or on --candidate_batch_size. OUTPUT_DIR/manifest.jsonl has one line per image, by caption index then rank:
caption_index, caption, source_index (its line / entry in the source), rank (0 = best), candidate, seed, clip_score
(null without a CLIP model), file (relative to OUTPUT_DIR), plus the source's image_id where it has one.
OUTPUT_DIR/generation_config.json records the settings (the reranking among them).

`accelerate launch` splits the unfinished captions over the processes (`split_between_processes`). Each process
appends a line per finished caption to OUTPUT_DIR/manifest.parts/rank-{i}.jsonl after writing its images (atomically),
so a killed run loses only the captions in flight: a rerun with the same settings, on any number of processes, skips
the finished ones. The last step merges the parts into manifest.jsonl. Memory stays bounded for any
--num_candidates: candidates are sampled --candidate_batch_size at a time (rows of several captions together when
there are few candidates) and only each caption's best images are kept.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hf_dalle import DEMO_MODEL_DIR, DallePipeline
from hf_dalle.device_utils import DTYPE_NAMES, resolve_device_and_dtype
from hf_dalle.io_utils import write_file_atomically, write_folder_atomically


logger = logging.getLogger(__name__)


# Settings that change what is generated: a rerun into the same folder must use the same ones.
GENERATION_SETTINGS = (
    "model",
    "num_candidates",
    "num_images_per_prompt",
    "seed",
    "negative_prompt",
    "temperature",
    "top_k",
    "top_p",
    "guidance_scale",
    "dtype",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_DIR, help="Pipeline folder or Hub id (default: the demo model).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="A .txt (a caption a line), .jsonl or MS-COCO annotations .json file.")
    source.add_argument("--dataset_name", help="A datasets Hub id or a `save_to_disk` folder holding the captions.")
    parser.add_argument("--dataset_config_name", default=None, help="The dataset's configuration, if it has several.")
    parser.add_argument("--dataset_split", default="train", help="The dataset's split (default: train).")
    parser.add_argument(
        "--caption_column", default="caption", help="Caption field of .jsonl / dataset rows (default: caption)."
    )
    parser.add_argument(
        "--max_captions", type=int, default=None, help="Keep a random sample (seeded by --seed) of this many captions."
    )
    parser.add_argument("--output_dir", required=True, help="Where images/, manifest.jsonl and the config go.")
    parser.add_argument("--num_candidates", type=int, default=16, help="Candidates sampled per caption (default: 16).")
    parser.add_argument(
        "--num_images_per_prompt", type=int, default=1, help="Best candidates written per caption (default: 1)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Global seed of the candidates (default: 0).")
    parser.add_argument(
        "--candidate_batch_size", type=int, default=16, help="Candidates sampled together per process (default: 16)."
    )
    parser.add_argument("--negative_prompt", default=None, help="Caption to steer away from (with guidance > 1).")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (default: 1.0).")
    parser.add_argument("--top_k", type=int, default=None, help="Sample among the k most likely codes (default: all).")
    parser.add_argument("--top_p", type=float, default=None, help="Nucleus sampling threshold (default: off).")
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance scale (default: the pipeline's default_guidance_scale; 1 = off).",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="Model dtype (default: auto: bfloat16 on CUDA, float32 on a CPU, where half precision is many times slower).",
    )
    args = parser.parse_args(argv)
    if args.num_candidates < 1 or not 1 <= args.num_images_per_prompt <= args.num_candidates:
        parser.error(
            f"--num_images_per_prompt must be between 1 and --num_candidates ({args.num_candidates}), "
            f"got {args.num_images_per_prompt}."
        )
    if args.candidate_batch_size < 1:
        parser.error(f"--candidate_batch_size must be positive, got {args.candidate_batch_size}.")
    if args.max_captions is not None and args.max_captions < 1:
        parser.error(f"--max_captions must be positive, got {args.max_captions}.")
    return args


def load_captions(args) -> list[dict]:
    """The caption set: dicts with `caption`, `source_index` (position in the source) and, where the source has it,
    `image_id`; a `--max_captions` sample keeps source order."""
    if args.dataset_name:
        import datasets

        if os.path.isdir(args.dataset_name):
            dataset = datasets.load_from_disk(args.dataset_name)
            dataset = dataset[args.dataset_split] if isinstance(dataset, datasets.DatasetDict) else dataset
        else:
            dataset = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
        if args.caption_column not in dataset.column_names:
            raise ValueError(
                f"--caption_column {args.caption_column!r} is not a column of {args.dataset_name} "
                f"(columns: {', '.join(dataset.column_names)})."
            )
        rows, source, column = [{"caption": c} for c in dataset[args.caption_column]], args.dataset_name, "caption"
    else:
        path, source = Path(args.captions), args.captions
        column = args.caption_column if path.suffix == ".jsonl" else "caption"
        if not path.is_file():
            raise FileNotFoundError(f"--captions {path} is not a file.")
        if path.suffix not in (".txt", ".jsonl", ".json"):
            raise ValueError(f"--captions must be a .txt, .jsonl or MS-COCO .json file, got {path.name}.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"--captions {path} is not UTF-8 text ({error}).") from None
        if path.suffix == ".txt":
            rows = [{"caption": line} for line in text.splitlines() if line.strip()]
        elif path.suffix == ".jsonl":
            rows = [json_line(line, number, path) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        else:
            try:
                annotations = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not JSON: {error}.") from None
            if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
                raise ValueError(f"{path} is not an MS-COCO captions file: it has no 'annotations' list.")
            rows = annotations["annotations"]
    items = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"Caption {index} of {source} is not an object with a {column!r} field: {_short(row)}.")
        caption = row.get(column)
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"Caption {index} of {source} is empty or missing (field {column!r}): {_short(row)}.")
        item = {"caption": " ".join(caption.split()), "source_index": index}
        if "image_id" in row:
            item["image_id"] = row["image_id"]
        items.append(item)
    if not items:
        raise ValueError(f"{source} holds no captions.")
    if args.max_captions is not None and args.max_captions < len(items):
        keep = sorted(random.Random(args.seed).sample(range(len(items)), args.max_captions))
        items = [items[i] for i in keep]
    return items


def json_line(line: str, number: int, path: Path):
    """One line of a .jsonl file, parsed; a `ValueError` naming the file and the line (JSON's own position would say
    line 1)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {number}: not JSON ({error.msg} at column {error.colno}).") from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def candidate_seed(seed: int, caption_index: int, candidate_index: int) -> int:
    """The seed of one candidate, a function of (global seed, caption index, candidate index) only (numpy's
    `SeedSequence` hashes the three into well-spread, independent streams)."""
    return int(np.random.SeedSequence([seed, caption_index, candidate_index]).generate_state(1, np.uint64)[0])


def generate_captions(pipe: DallePipeline, items: list[tuple[int, str]], args):
    """Yield `(caption_index, best)` for each `(caption_index, caption)` of `items` as soon as its group of captions is
    done; `best` is a list of `(candidate, seed, image, clip_score)`, best first (by CLIP score, ties in candidate order;
    the first candidates without a CLIP model), as the pipeline ranks them.

    The pipeline is called on groups of captions whose candidates fill whole batches of `candidate_batch_size` (rows of
    several captions together when there are few candidates), each candidate with its own generator: the pipeline's
    per-candidate generators make each image independent of the grouping and batching."""
    num_candidates, batch_size = args.num_candidates, args.candidate_batch_size
    group_size = batch_size // math.gcd(batch_size, num_candidates)  # captions whose candidates fill whole batches
    for start in range(0, len(items), group_size):
        group = items[start : start + group_size]
        seeds = [[candidate_seed(args.seed, index, k) for k in range(num_candidates)] for index, _ in group]
        output = pipe(
            [caption for _, caption in group],
            negative_prompt=args.negative_prompt,
            num_candidates=num_candidates,
            num_images_per_prompt=args.num_images_per_prompt,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            guidance_scale=args.guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for caption_seeds in seeds for seed in caption_seeds],
            candidate_batch_size=batch_size,
        )
        scores = output.scores if output.scores is not None else [None] * len(output.images)
        kept = zip(output.candidate_indices, output.images, scores)
        for (index, _), caption_seeds in zip(group, seeds):
            best = [next(kept) for _ in range(args.num_images_per_prompt)]
            yield index, [(candidate, caption_seeds[candidate], image, score) for candidate, image, score in best]


def is_caption_record(record, num_captions: int, num_images: int) -> bool:
    """Whether a parsed line of a part file is a finished caption's record, as `write_caption` returns it."""
    index = record.get("caption_index") if isinstance(record, dict) else None
    if type(index) is not int or not 0 <= index < num_captions or not isinstance(record.get("images"), list):
        return False
    files = [entry.get("file") if isinstance(entry, dict) else None for entry in record["images"]]
    return files == [f"images/{index:06d}_{rank}.png" for rank in range(num_images)]


def read_parts(output_dir: Path, num_captions: int, num_images: int) -> dict[int, dict]:
    """The finished captions recorded in `output_dir`'s part files by any earlier or concurrent process: caption index
    -> record. A line cut short by a kill is not a record, nor is a damaged one or one whose images are gone (deleted
    since), which are warned about: their captions are generated again (the same images: the seeds are the
    caption's)."""
    finished = {}
    for part in sorted((output_dir / "manifest.parts").glob("rank-*.jsonl")):
        for number, line in enumerate(part.read_bytes().splitlines(), 1):
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # cut short by a kill
            if not is_caption_record(record, num_captions, num_images):
                logger.warning("%s, line %d is not a caption's record: its caption is generated again.", part, number)
                continue
            missing = [entry["file"] for entry in record["images"] if not (output_dir / entry["file"]).is_file()]
            if missing:
                logger.warning("%s, line %d: %s are missing: generated again.", part, number, missing)
                continue
            finished[record["caption_index"]] = record
    return finished


class JobProgress:
    """A progress bar over the whole job's captions on the main process: it counts the lines every process has
    appended to its part file (reading only what is new each time)."""

    def __init__(self, parts_dir: Path, total: int, finished: int, enabled: bool):
        self.parts_dir, self.offsets = parts_dir, {p: p.stat().st_size for p in parts_dir.glob("rank-*.jsonl")}
        self.bar = tqdm(total=total, initial=finished, unit="caption", desc="captions", disable=not enabled)
        self.enabled = enabled

    def refresh(self) -> None:
        if not self.enabled:
            return
        new = 0
        for part in self.parts_dir.glob("rank-*.jsonl"):
            with open(part, "rb") as file:
                file.seek(self.offsets.get(part, 0))
                chunk = file.read()
            self.offsets[part] = self.offsets.get(part, 0) + len(chunk)
            new += chunk.count(b"\n")
        self.bar.update(min(new, self.bar.total - self.bar.n))

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def write_caption(output_dir: Path, item: dict, index: int, best: list) -> dict:
    """Write one caption's images atomically; its record for the manifest."""
    names = [f"{index:06d}_{rank}.png" for rank in range(len(best))]

    def save(folder: Path) -> None:
        for name, (_, _, image, _) in zip(names, best):
            image.save(folder / name, format="PNG")

    write_folder_atomically(output_dir / "images", save)
    extra = {"image_id": item["image_id"]} if "image_id" in item else {}
    images = [
        {
            "caption_index": index,
            "caption": item["caption"],
            "source_index": item["source_index"],
            **extra,
            "rank": rank,
            "candidate": candidate,
            "seed": seed,
            "clip_score": score,
            "file": f"images/{name}",
        }
        for rank, (name, (candidate, seed, _, score)) in enumerate(zip(names, best))
    ]
    return {"caption_index": index, "images": images}


def job_settings(args, captions: list[dict]) -> dict:
    digest = hashlib.sha256("\n".join(item["caption"] for item in captions).encode()).hexdigest()
    settings = {key: getattr(args, key) for key in GENERATION_SETTINGS}
    settings["model"] = str(settings["model"])
    return {**settings, "num_captions": len(captions), "captions_sha256": digest}


def check_or_write_settings(output_dir: Path, settings: dict) -> None:
    """Record the job's settings; a rerun into a folder that holds another job's images is refused."""
    path = output_dir / "generation_config.json"
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SystemExit(
                f"{path} is damaged (not JSON: {error}), so the run in {output_dir} cannot be resumed safely; use "
                "another --output_dir."
            ) from None
        if not isinstance(recorded, dict):
            raise SystemExit(f"{path} is damaged (not a JSON object); use another --output_dir.")
        differing = sorted(key for key in settings if recorded.get(key) != settings[key])
        if differing:
            raise SystemExit(
                f"{output_dir} holds a generation run with other settings ({', '.join(differing)}: "
                f"{[recorded.get(k) for k in differing]} there, {[settings[k] for k in differing]} now); "
                "use another --output_dir or the same settings to resume."
            )
        return
    text = json.dumps(settings, indent=2) + "\n"
    write_file_atomically(path, lambda temporary: temporary.write_text(text))


def main(argv=None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator()
    try:
        captions = load_captions(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    output_dir = Path(args.output_dir)
    parts_dir = output_dir / "manifest.parts"
    if accelerator.is_main_process:
        parts_dir.mkdir(parents=True, exist_ok=True)
        check_or_write_settings(output_dir, job_settings(args, captions))
    accelerator.wait_for_everyone()

    device, dtype = resolve_device_and_dtype(accelerator.device, args.dtype)
    pipe = DallePipeline.from_pretrained(args.model, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    finished = read_parts(output_dir, len(captions), args.num_images_per_prompt)
    pending = [(i, item["caption"]) for i, item in enumerate(captions) if i not in finished]
    progress = JobProgress(parts_dir, len(captions), len(finished), accelerator.is_main_process)
    accelerator.wait_for_everyone()  # everyone has read the parts before anyone appends to them
    part = parts_dir / f"rank-{accelerator.process_index}.jsonl"
    if part.is_file() and part.stat().st_size and not part.read_bytes().endswith(b"\n"):
        with open(part, "a", encoding="utf-8") as file:  # end a line cut short by a kill before appending
            file.write("\n")
    with accelerator.split_between_processes(pending) as mine, open(part, "a", encoding="utf-8") as file:
        for index, best in generate_captions(pipe, mine, args):
            record = write_caption(output_dir, captions[index], index, best)
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
            progress.refresh()
    accelerator.wait_for_everyone()
    progress.close()

    if accelerator.is_main_process:
        finished = read_parts(output_dir, len(captions), args.num_images_per_prompt)
        missing = [i for i in range(len(captions)) if i not in finished]
        if missing:
            raise RuntimeError(f"{len(missing)} captions have no record in {parts_dir} (first: {missing[:5]}).")
        lines = [json.dumps(entry) for i in range(len(captions)) for entry in finished[i]["images"]]
        text = "\n".join(lines) + "\n"
        write_file_atomically(output_dir / "manifest.jsonl", lambda temporary: temporary.write_text(text))
        print(f"{output_dir / 'manifest.jsonl'}: {len(lines)} images of {len(captions)} captions")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
