"""Model cards and Hub uploads (against the loopback Hub of tests/hub_server.py)."""

import logging
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

from hf_dalle import DalleVAE, DalleVAEConfig
from hf_dalle.hub_utils import (
    MODEL_CARDS_DIR,
    push_folder_to_hub,
    render_model_card,
    write_card_and_push,
    write_model_card,
)


def test_render_model_card_from_a_name_or_a_path(tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n\n# {{ title }}\n\nTrained for {{ steps }} steps.\n")
    card = render_model_card(template, ModelCardData(license="mit", tags=["dall-e"]), title="A tiny dVAE", steps=12)
    assert card.data.library_name == "hf_dalle"  # filled in when not given
    assert card.data.license == "mit" and card.data.tags == ["dall-e"]
    assert card.text.strip() == "# A tiny dVAE\n\nTrained for 12 steps."

    config = DalleVAEConfig(hidden_size=16, vocab_size=64)
    card = render_model_card(
        "dalle_vae",
        ModelCardData(library_name="custom", license="apache-2.0"),
        model_name="A dVAE",
        repo_id="someone/dvae",
        config=config,
        encoder_parameters=1234,
        decoder_parameters=5678,
    )
    assert card.data.library_name == "custom"
    assert "# A dVAE" in card.text and "encoder 1,234, decoder 5,678" in card.text
    assert "## How it was converted" not in card.text  # conversion details only for converted weights


def test_render_model_card_unknown_template():
    with pytest.raises(FileNotFoundError, match=r"'no_such_card' not found.*'dalle_vae'"):
        render_model_card("no_such_card", ModelCardData())
    assert (MODEL_CARDS_DIR / "dalle_vae.md").is_file()


def test_write_model_card(tmp_path):
    card = render_model_card(
        "dalle_vae",
        ModelCardData(license="mit", tags=["dvae"]),
        model_name="A dVAE",
        repo_id="someone/dvae",
        config=DalleVAEConfig(),
        encoder_parameters=1,
        decoder_parameters=2,
    )
    path = write_model_card(card, tmp_path)
    assert path == tmp_path / "README.md"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left
    assert path.read_text() == str(card)
    assert ModelCard.load(path).data.to_dict() == {"library_name": "hf_dalle", "license": "mit", "tags": ["dvae"]}


def test_write_card_and_push(tmp_path, hub_server, monkeypatch):
    """The tail of every script that writes a model folder: the card names the folder when it stays local, the Hub
    repo (default: the folder's name) when it is pushed, and then the folder goes up."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "tiny-dvae"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    card_values = {
        "model_name": "A dVAE",
        "config": DalleVAEConfig(),
        "encoder_parameters": 1,
        "decoder_parameters": 2,
    }

    assert write_card_and_push(folder, "dalle_vae", ModelCardData(license="mit"), **card_values) is None
    assert 'DalleVAE.from_pretrained("tiny-dvae")' in (folder / "README.md").read_text()  # relative, not /tmp/...
    assert hub_server.commits == []

    commit = write_card_and_push(
        folder, "dalle_vae", ModelCardData(license="mit"), push_to_hub=True, commit_message="Add it", **card_values
    )
    assert commit.repo_url.repo_id == "hf-dalle-tester/tiny-dvae"
    uploaded = hub_server.files("hf-dalle-tester/tiny-dvae")
    assert sorted(uploaded) == ["README.md", "config.json"] and hub_server.commits[-1]["summary"] == "Add it"
    assert b'DalleVAE.from_pretrained("tiny-dvae")' in uploaded["README.md"]  # the repo id, namespace-less as given

    write_card_and_push(
        folder,
        "dalle_vae",
        ModelCardData(),
        push_to_hub=True,
        hub_model_id="org/other",
        hub_private=True,
        **card_values,
    )
    assert b'DalleVAE.from_pretrained("org/other")' in hub_server.files("org/other")["README.md"]


def test_push_folder_to_hub_uploads_the_exact_bytes(tmp_path, hub_server):
    folder = tmp_path / "model"
    (folder / "unet" / "nested").mkdir(parents=True)
    files = {
        "config.json": b'{"a": 1}\n',
        "unet/model.safetensors": torch.randn(1000).numpy().tobytes(),
        "unet/nested/merges.txt": "caf\u00e9\n".encode(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)

    commit = push_folder_to_hub(folder, "my-model", commit_message="first")
    assert commit.repo_url.repo_id == "hf-dalle-tester/my-model"  # no namespace given: the token's user
    assert hub_server.files("hf-dalle-tester/my-model") == files
    assert hub_server.commits[-1]["added"] == sorted(files) and commit.oid in commit.commit_url
    snapshot = Path(
        huggingface_hub.snapshot_download("hf-dalle-tester/my-model")
    )  # lists the tree, downloads each file
    assert {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()} == files

    # A second push sends only what changed (the Hub reports the oids of the files it has).
    files["config.json"] = b'{"a": 2}\n'
    files["extra/config.json"] = b"new"
    (folder / "extra").mkdir()
    for name in ("config.json", "extra/config.json"):
        (folder / name).write_bytes(files[name])
    push_folder_to_hub(folder, "hf-dalle-tester/my-model", commit_message="second")
    assert hub_server.files("hf-dalle-tester/my-model") == files
    assert [(c["summary"], sorted(c["added"])) for c in hub_server.commits] == [
        ("first", sorted(["config.json", "unet/model.safetensors", "unet/nested/merges.txt"])),
        ("second", ["config.json", "extra/config.json"]),
    ]


def test_push_folder_to_hub_uploads_only_what_a_model_folder_holds(tmp_path, hub_server, caplog):
    """An allowlist: weights, configs, tokenizer files, the card and the validation grids go up; a stray `.env` with
    a token, pickles, notes, checkpoints and logs stay local (and are named in a warning)."""
    folder = tmp_path / "model"
    allowed = [
        "README.md", "model_index.json", "transformer/config.json", "transformer/model.safetensors",
        "transformer/model.non_ema.safetensors", "transformer/generation_config.json", "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json", "clip_processor/processor_config.json", "clip_processor/vocab.json",
        "clip_processor/merges.txt", "clip_processor/special_tokens_map.json", "validation/step-000004.png",
        "adapter_model.safetensors", "adapter_config.json",
    ]  # fmt: skip
    stray = [
        ".env", "transformer/.env", ".cache/token", ".secrets/config.json", "notes.txt", "optimizer.bin",
        "transformer/pytorch_model.bin", "data.pkl", "checkpoints/checkpoint-2/model.safetensors",
        "checkpoints/checkpoint-2/config.json", "logs/metrics.jsonl", "id_rsa", "run.sh",
        ".tmp-save-x/model.safetensors",
    ]  # fmt: skip
    for name in allowed + stray:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"contents of {name}".encode())
    with caplog.at_level(logging.WARNING, logger="hf_dalle.hub_utils"):
        push_folder_to_hub(folder, "someone/model")
    assert sorted(hub_server.files("someone/model")) == sorted(allowed)
    assert "Not uploaded from" in caplog.text and "notes.txt" in caplog.text and ".env" in caplog.text
    with pytest.raises(ValueError, match="Nothing to push from"):
        push_folder_to_hub(folder / "logs", "someone/logs")


def test_push_folder_to_hub_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        push_folder_to_hub(tmp_path / "missing", "someone/model")


def test_fixture_serves_library_push_and_download_paths(tmp_path, hub_server):
    # huggingface_hub's module-level functions (diffusers' push_to_hub uses them) reach the local hub too.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a")
    repo_id = huggingface_hub.create_repo("org/plain", exist_ok=True).repo_id
    huggingface_hub.upload_folder(repo_id=repo_id, folder_path=folder)
    assert hub_server.files("org/plain") == {"a.txt": b"a"}
    huggingface_hub.HfApi().delete_file("a.txt", repo_id)  # a plain create_commit with a deletion
    assert hub_server.files("org/plain") == {} and hub_server.commits[-1]["deleted"] == ["a.txt"]

    # transformers' push_to_hub (with its model card check) and from_pretrained(repo_id).
    vae = DalleVAE(DalleVAEConfig(hidden_size=8, vocab_size=16, num_blocks_per_group=1, decoder_init_size=8))
    vae.push_to_hub("org/tiny-vae")
    assert {"config.json", "model.safetensors"} <= set(hub_server.files("org/tiny-vae"))
    downloaded = DalleVAE.from_pretrained("org/tiny-vae")
    for name, tensor in vae.state_dict().items():
        assert torch.equal(downloaded.state_dict()[name], tensor), name
    with pytest.raises(OSError, match="org/missing"):
        DalleVAE.from_pretrained("org/missing")
