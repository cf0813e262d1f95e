"""The four training scripts chained on generated shapes-world pairs, as a user runs them: train_vae -> pretokenize ->
train_clip -> train_dalle, then fine-tuning the resulting pipeline on an imagefolder, and pushing to a local Hub."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from training_utils import load_script, training_environment  # noqa: F401 (autouse fixture)
from transformers import CLIPModel, CLIPProcessor

from hf_dalle import DalleForImageGeneration, DallePipeline, DalleTokenizer, DalleVAE
from hf_dalle.data import all_captions, make_shapes_dataset
from hf_dalle.training import load_pretokenized_dataset


TINY_VAE = '{"hidden_size": 8, "vocab_size": 16, "num_blocks_per_group": 1, "decoder_init_size": 8}'
TINY_DALLE = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}'
TINY_CLIP = json.dumps(
    {
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
        "projection_dim": 32,
    }
)
COMMON = ["--logging_steps", "2", "--checkpointing_steps", "100", "--validation_steps", "100"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Every stage trained for a few steps on 24 pairs of 32x32: paths of the data and of each output."""
    root = tmp_path_factory.mktemp("e2e")
    paths = {name: root / name for name in ("data", "tokenizer", "vae", "tokens", "clip", "pipeline")}
    make_shapes_dataset(24, seed=2, image_size=32).save_to_disk(str(paths["data"]))
    DalleTokenizer.train_from_texts(all_captions(), vocab_size=300, max_text_length=16).save_pretrained(
        paths["tokenizer"]
    )
    data = ["--dataset_name", str(paths["data"]), "--resolution", "32"]
    load_script("train_vae").main(
        [
            *data,
            *COMMON,
            "--model_config",
            TINY_VAE,
            "--max_train_steps",
            "4",
            "--train_batch_size",
            "8",
            "--validation_steps",
            "2",
            "--num_validation_images",
            "4",
            "--shapes_judge",
            "--output_dir",
            str(paths["vae"]),
        ]
    )
    load_script("pretokenize").main(
        [
            *data,
            "--vae_model_name_or_path",
            str(paths["vae"]),
            "--tokenizer_name_or_path",
            str(paths["tokenizer"]),
            "--batch_size",
            "5",
            "--output_dir",
            str(paths["tokens"]),
        ]
    )
    load_script("train_clip").main(
        [
            *data,
            *COMMON,
            "--model_config",
            TINY_CLIP,
            "--tokenizer_name_or_path",
            str(paths["tokenizer"]),
            "--max_train_steps",
            "4",
            "--train_batch_size",
            "8",
            "--num_validation_pairs",
            "8",
            "--output_dir",
            str(paths["clip"]),
        ]
    )
    load_script("train_dalle").main(
        [
            *COMMON,
            "--pretokenized_dataset",
            str(paths["tokens"]),
            "--model_config",
            TINY_DALLE,
            "--max_train_steps",
            "4",
            "--train_batch_size",
            "8",
            "--use_ema",
            "--validation_steps",
            "4",
            "--num_validation_images",
            "2",
            "--validation_prompts",
            "a red circle",
            "a blue square above a green triangle",
            "--clip_model_name_or_path",
            str(paths["clip"]),
            "--output_dir",
            str(paths["pipeline"]),
        ]
    )
    return paths


def test_train_vae_output(trained):
    vae = DalleVAE.from_pretrained(trained["vae"])
    assert (vae.config.hidden_size, vae.config.vocab_size, vae.config.image_size) == (8, 16, 32)
    grids = sorted(p.name for p in (trained["vae"] / "reconstructions").iterdir())
    assert grids == ["step-000002.png", "step-000004.png"]
    # 4 validation images above their reconstructions.
    assert Image.open(trained["vae"] / "reconstructions" / grids[-1]).size == (4 * 32, 2 * 32)
    logs = [json.loads(line) for line in (trained["vae"] / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs] == [1, 2, 2, 4, 4]  # training averages (the first step too), validations
    training_metrics = {"reconstruction_loss", "kl_loss", "codes_used", "perplexity", "temperature", "kl_weight"}
    assert training_metrics <= logs[-2].keys()
    assert 1 <= logs[-1]["validation_codes_used"] <= 16 and logs[-1]["validation_mse"] > 0
    assert logs[-1]["validation_judge_accuracy"] in (0, 0.25, 0.5, 0.75, 1)  # 4 images judged
    assert "| validation_codes_used |" in (trained["vae"] / "README.md").read_text()
    card = (trained["vae"] / "README.md").read_text()
    assert (
        "scripts/train_vae.py" in card
        and "reconstructions/step-000004.png" in card
        and "| `--max_train_steps` | 4 |" in card
    )


def test_pretokenized_data_matches_the_vae_and_tokenizer(trained):
    dataset = load_pretokenized_dataset(str(trained["tokens"]))
    vae = DalleVAE.from_pretrained(trained["vae"])
    tokenizer = DalleTokenizer.from_pretrained(trained["tokenizer"])
    source = make_shapes_dataset(24, seed=2, image_size=32)
    assert len(dataset) == 24
    from hf_dalle.training import image_to_tensor

    pixels = torch.stack([image_to_tensor(row["image"], 32) for row in source.select(range(6))])
    with torch.no_grad():
        codes = vae.encode(pixels).indices.flatten(1)
    assert torch.equal(dataset[:6]["image_codes"].long(), codes)
    assert torch.equal(dataset[:6]["text_input_ids"].long(), tokenizer.encode_captions(source[:6]["caption"]))
    info = json.loads((trained["tokens"] / "hf_dalle_pretokenized.json").read_text())
    assert (info["image_grid_size"], info["image_vocab_size"], info["max_text_length"]) == (4, 16, 16)


def test_pretokenize_streaming_to_parquet_matches(trained, tmp_path):
    """A streamed dataset, written as parquet shards, gives the same rows as the in-memory one saved with
    save_to_disk, in the same order."""
    output_dir = tmp_path / "streamed"
    load_script("pretokenize").main(
        [
            "--dataset_name",
            str(trained["data"]),
            "--streaming",
            "--vae_model_name_or_path",
            str(trained["vae"]),
            "--tokenizer_name_or_path",
            str(trained["tokenizer"]),
            "--output_format",
            "parquet",
            "--rows_per_shard",
            "10",
            "--batch_size",
            "7",
            "--output_dir",
            str(output_dir),
        ]
    )
    assert sorted(p.name for p in (output_dir / "data").iterdir()) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)
    ]
    streamed, saved = load_pretokenized_dataset(str(output_dir)), load_pretokenized_dataset(str(trained["tokens"]))
    assert len(streamed) == len(saved) == 24
    assert torch.equal(streamed[:]["image_codes"], saved[:]["image_codes"])
    assert torch.equal(streamed[:]["text_input_ids"], saved[:]["text_input_ids"])
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary folder was renamed


def test_train_clip_output_works_offline(trained):
    model, processor = CLIPModel.from_pretrained(trained["clip"]), CLIPProcessor.from_pretrained(trained["clip"])
    tokens = processor.tokenizer(["A Red Circle", "a red circle above a blue square"], padding=True)
    eos = processor.tokenizer.eos_token_id
    assert model.config.text_config.eos_token_id == eos
    # Lowercased like the DALL-E tokenizer, one end-of-text token closing every caption (CLIP pools there).
    assert (
        tokens["input_ids"][0][: tokens["attention_mask"][0].count(1)]
        == processor.tokenizer("a red circle")["input_ids"]
    )
    assert [ids.count(eos) for ids in tokens["input_ids"]] == [1, 1]
    assert [ids[mask.count(1) - 1] for ids, mask in zip(tokens["input_ids"], tokens["attention_mask"])] == [eos, eos]
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}


def test_train_dalle_output_is_a_pipeline_with_ema(trained):
    pipe = DallePipeline.from_pretrained(trained["pipeline"])
    assert pipe.clip_model is not None and pipe.image_size == 32
    output = pipe(
        ["a red circle"], num_candidates=3, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0)
    )
    assert len(output.images) == 2 and output.scores[0] >= output.scores[1]
    # The pipeline samples with the EMA weights; the raw weights sit beside them as the non_ema variant.
    folder = trained["pipeline"] / "transformer"
    ema, raw = load_file(folder / "model.safetensors"), load_file(folder / "model.non_ema.safetensors")
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    raw_model = DalleForImageGeneration.from_pretrained(folder, variant="non_ema")
    assert all(torch.equal(p, raw[n]) for n, p in raw_model.state_dict().items() if n in raw)
    assert (trained["pipeline"] / "validation" / "step-000004.png").is_file()
    card = ModelCard.load(trained["pipeline"] / "README.md")
    assert card.data.library_name == "hf_dalle" and "text-to-image" in card.data.tags
    assert "validation/step-000004.png" in card.text and '"a blue square above a green triangle"' in card.text


def test_model_cards_record_no_absolute_paths(trained):
    """The outputs, data and sources lie outside the working directory: the cards name them by their last part."""
    root = str(trained["data"].parent)
    cards = {name: (trained[name] / "README.md").read_text() for name in ("vae", "clip", "pipeline")}
    for name, card in cards.items():
        assert root not in card, name
        assert "--output_dir " + name in card, name
    assert "on `data`:" in cards["vae"] and "on `data`:" in cards["clip"]
    assert 'DallePipeline.from_pretrained("pipeline")' in cards["pipeline"]
    assert "Pre-tokenized pairs from `tokens` (24 pairs, 32x32 images encoded by `vae`" in cards["pipeline"]


def test_pretokenize_names_the_row_without_a_caption(trained, tmp_path):
    folder = tmp_path / "my_images"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(make_shapes_dataset(4, seed=5, image_size=32)):
            row["image"].save(folder / f"{index}.png")
            metadata.write(
                json.dumps({"file_name": f"{index}.png", **({"text": row["caption"]} if index != 2 else {})})
            )
            metadata.write("\n")
    tokens = tmp_path / "tokens"
    with pytest.raises(
        ValueError, match=r"Row 2 \(.*2.png\) has no caption: its 'text' is None.*on every line of .*metadata.jsonl"
    ):
        load_script("pretokenize").main(
            [
                "--train_data_dir",
                str(folder),
                "--caption_column",
                "text",
                "--pretrained_model_name_or_path",
                str(trained["pipeline"]),
                "--output_dir",
                str(tokens),
            ]
        )
    assert not tokens.exists() and not list(tmp_path.glob(".tmp-*"))


def test_fine_tune_the_pipeline_on_an_imagefolder(trained, tmp_path):
    """The README's fine-tuning recipe: pre-tokenize an imagefolder with the pipeline's own dVAE and tokenizer, then
    continue training its transformer."""
    folder = tmp_path / "my_images"
    folder.mkdir()
    rows = make_shapes_dataset(8, seed=5, image_size=48)  # other size: resized to the pipeline's 32
    with open(folder / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(rows):
            row["image"].save(folder / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "text": row["caption"]}) + "\n")
    tokens = tmp_path / "tokens"
    load_script("pretokenize").main(
        [
            "--train_data_dir",
            str(folder),
            "--caption_column",
            "text",
            "--pretrained_model_name_or_path",
            str(trained["pipeline"]),
            "--output_dir",
            str(tokens),
            "--output_format",
            "parquet",
        ]
    )
    output_dir = tmp_path / "fine-tuned"
    state = load_script("train_dalle").main(
        [
            *COMMON,
            "--pretrained_model_name_or_path",
            str(trained["pipeline"]),
            "--pretokenized_dataset",
            str(tokens),
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "4",
            "--output_dir",
            str(output_dir),
        ]
    )
    assert state.global_step == 2
    before = DalleForImageGeneration.from_pretrained(trained["pipeline"] / "transformer")
    after = DalleForImageGeneration.from_pretrained(output_dir / "transformer")
    assert after.config.to_diff_dict() | {"_name_or_path": None} == before.config.to_diff_dict() | {
        "_name_or_path": None
    }
    changed = [n for n, p in after.state_dict().items() if not torch.equal(p, before.state_dict()[n])]
    assert changed  # trained from the pipeline's weights ...
    close = [n for n, p in after.state_dict().items() if torch.allclose(p, before.state_dict()[n], atol=0.01)]
    assert len(close) == len(after.state_dict())  # ... two small steps away from them
    assert (output_dir / "clip_model").is_dir()  # the reranker is carried over


def test_errors_name_the_problem(trained, tmp_path):
    train_dalle, pretokenize = load_script("train_dalle"), load_script("pretokenize")
    with pytest.raises(ValueError, match="is not pre-tokenized data: it lacks the columns"):
        train_dalle.main(
            [
                "--pretokenized_dataset",
                str(trained["data"]),
                "--tokenizer_name_or_path",
                str(trained["tokenizer"]),
                "--vae_model_name_or_path",
                str(trained["vae"]),
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(
        ValueError, match="The transformer does not fit its data: the dVAE has 16 codes, the transformer 32"
    ):
        train_dalle.main(
            [
                "--pretokenized_dataset",
                str(trained["tokens"]),
                "--model_config",
                '{"image_vocab_size": 32}',
                "--train_batch_size",
                "8",
                "--output_dir",
                str(tmp_path / "y"),
            ]
        )
    with pytest.raises(ValueError, match="has no column 'text'.*its columns are \\['image', 'caption'\\]"):
        pretokenize.main(
            [
                "--dataset_name",
                str(trained["data"]),
                "--caption_column",
                "text",
                "--pretrained_model_name_or_path",
                str(trained["pipeline"]),
                "--output_dir",
                str(tmp_path / "z"),
            ]
        )
    with pytest.raises(ValueError, match="already exists"):
        pretokenize.main(
            [
                "--dataset_name",
                str(trained["data"]),
                "--pretrained_model_name_or_path",
                str(trained["pipeline"]),
                "--output_dir",
                str(trained["tokens"]),
            ]
        )


def test_push_to_hub(trained, tmp_path, hub_server):
    output_dir = tmp_path / "pushed"
    output_dir.mkdir()
    stray = {".env": b"HF_TOKEN=hf_secret\n", "notes.txt": b"private", "transformer/.env": b"HF_TOKEN=hf_secret\n"}
    (output_dir / "transformer").mkdir()
    for name, data in stray.items():  # left in --output_dir before training: never pushed
        (output_dir / name).write_bytes(data)
    load_script("train_dalle").main(
        [
            *COMMON,
            "--resume_from_checkpoint",  # the folder is not empty: train there (no checkpoint yet: from step 0)
            "latest",
            "--pretrained_model_name_or_path",
            str(trained["pipeline"]),
            "--pretokenized_dataset",
            str(trained["tokens"]),
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "8",
            "--use_ema",
            "--license",
            "mit",
            "--checkpointing_steps",
            "1",
            "--output_dir",
            str(output_dir),
            "--push_to_hub",
            "--hub_model_id",
            "someone/tiny-dalle",
        ]
    )
    uploaded = hub_server.files("someone/tiny-dalle")
    local = {str(p.relative_to(output_dir)): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    expected = {
        name: data
        for name, data in local.items()
        if not name.startswith(("checkpoints/", "logs/")) and name not in stray
    }
    assert uploaded == expected  # every file intact; checkpoints, logs and stray files kept local
    assert {
        "model_index.json",
        "transformer/model.safetensors",
        "transformer/model.non_ema.safetensors",
        "tokenizer/tokenizer.json",
        "vae/model.safetensors",
        "clip_model/model.safetensors",
        "README.md",
    } <= uploaded.keys()
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.license == "mit" and 'DallePipeline.from_pretrained("someone/tiny-dalle")' in card.text
    assert [commit["summary"] for commit in hub_server.commits] == ["Add DALL-E pipeline trained with hf_dalle"]
    pipe = DallePipeline.from_pretrained("someone/tiny-dalle")  # downloaded back from the local Hub
    assert torch.equal(
        pipe.transformer.lm_head.weight, DallePipeline.from_pretrained(output_dir).transformer.lm_head.weight
    )

    # Fine-tuning starts from the Hub repo as from a folder: its transformer, tokenizer, dVAE and CLIP.
    tokens = tmp_path / "hub_tokens"
    load_script("pretokenize").main(
        [
            "--dataset_name",
            str(trained["data"]),
            "--pretrained_model_name_or_path",
            "someone/tiny-dalle",
            "--output_dir",
            str(tokens),
        ]
    )
    assert torch.equal(
        load_pretokenized_dataset(str(tokens))[:]["image_codes"],
        load_pretokenized_dataset(str(trained["tokens"]))[:]["image_codes"],
    )
    fine_tuned = tmp_path / "from_hub"
    load_script("train_dalle").main(
        [
            *COMMON,
            "--pretrained_model_name_or_path",
            "someone/tiny-dalle",
            "--pretokenized_dataset",
            str(tokens),
            "--max_train_steps",
            "1",
            "--train_batch_size",
            "8",
            "--output_dir",
            str(fine_tuned),
        ]
    )
    assert (fine_tuned / "clip_model" / "model.safetensors").is_file()
    assert DallePipeline.from_pretrained(fine_tuned).transformer.config.to_diff_dict() | {"_name_or_path": None} == (
        pipe.transformer.config.to_diff_dict() | {"_name_or_path": None}
    )


def test_train_dalle_resume_is_exact(trained, tmp_path):
    """Caption dropout, EMA and validation grids (sampled at the checkpoint step, with their own generators) do not
    break exact resumption: 4 steps straight == 2 steps, then resumed for 2 more from checkpoint-2."""
    train_dalle = load_script("train_dalle")

    def args(output_dir: Path, max_steps: int, *extra: str) -> list[str]:
        return [
            "--pretokenized_dataset",
            str(trained["tokens"]),
            "--model_config",
            TINY_DALLE,
            "--max_train_steps",
            str(max_steps),
            "--train_batch_size",
            "8",
            "--caption_dropout",
            "0.5",
            "--use_ema",
            "--ema_decay",
            "0.5",
            "--checkpointing_steps",
            "2",
            "--validation_steps",
            "2",
            "--num_validation_images",
            "1",
            "--logging_steps",
            "1",
            "--lr_scheduler",
            "constant",
            "--output_dir",
            str(output_dir),
            *extra,
        ]

    train_dalle.main(args(tmp_path / "straight", 4))
    train_dalle.main(args(tmp_path / "resumed", 2))  # stops after checkpoint-2 (and its validation grid)
    train_dalle.main(args(tmp_path / "resumed", 4, "--resume_from_checkpoint", "latest"))
    for filename in ("model.safetensors", "model.non_ema.safetensors"):
        straight = load_file(tmp_path / "straight" / "transformer" / filename)
        resumed = load_file(tmp_path / "resumed" / "transformer" / filename)
        assert all(torch.equal(straight[name], resumed[name]) for name in straight), filename
    grids = [Image.open(tmp_path / run / "validation" / "step-000004.png") for run in ("straight", "resumed")]
    assert grids[0].tobytes() == grids[1].tobytes()


def test_text_loss_weight_flag(trained, tmp_path):
    """--text_loss_weight sets the model's weighting of the two cross-entropies (paper: 1/8 text, 7/8 image)."""
    output_dir = tmp_path / "weighted"
    load_script("train_dalle").main(
        [
            *COMMON,
            "--pretokenized_dataset",
            str(trained["tokens"]),
            "--model_config",
            TINY_DALLE,
            "--logging_steps",
            "1",
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "8",
            "--text_loss_weight",
            "0.5",
            "--output_dir",
            str(output_dir),
        ]
    )
    logs = [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(logs) == 2
    for log in logs:
        assert log["loss"] == pytest.approx(0.5 * log["text_loss"] + 0.5 * log["image_loss"], rel=1e-5)
    assert DalleForImageGeneration.from_pretrained(output_dir / "transformer").config.text_loss_weight == 0.5
