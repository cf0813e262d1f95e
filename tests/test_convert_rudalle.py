"""ruDALL-E conversion: the transformer, the caption tokenizer and the converter script, checked against ruDALL-E's
own code (marker `parity`, in the reference venv) and, without it, for their errors and file layout."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from reference_models import import_reference
from rudalle_reference import (
    build_rudalle_model,
    import_rudalle,
    rudalle_caption_ids,
    rudalle_generate_codes,
    save_rudalle_checkpoint,
)
from test_convert_rudalle_vqgan import reference_vqgan, small_taming_config
from test_convert_yttm import write_model
from training_utils import REPO_ROOT, load_script, training_environment  # noqa: F401 (fixture)

from hf_dalle import DalleConfig, DalleForImageGeneration, DallePipeline, DalleTokenizer
from hf_dalle.conversion.convert_ruclip import convert_ruclip
from hf_dalle.conversion.convert_rudalle import (
    RUDALLE_MODELS,
    RUDALLE_UTILS_REPO,
    RUDALLE_VQGAN_FILENAMES,
    convert_rudalle,
    rudalle_attention_types,
    rudalle_dalle_config,
    rudalle_tokenizer,
)
from hf_dalle.conversion.convert_rudalle_vqgan import convert_sber_vqgan
from hf_dalle.models.dalle.masking_dalle import build_attention_masks
from hf_dalle.testing_utils import (
    make_tiny_pipeline,
    random_ruclip_state_dict,
    random_rudalle_state_dict,
    random_taming_vqgan_state_dict,
)
from hf_dalle.training import image_to_tensor, load_pretokenized_dataset


WORDS = "кот собака рыжий пёс красный синий дом на столе в лесу картина маслом летит над городом закат море".split()


def caption_corpus(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(count)]


def tricky_captions(seed: int) -> list[str]:
    """Captions that exercise YTTM's and ruDALL-E's rules: case, Unicode and ASCII-control spaces (inside and at the
    ends, where Python's strip() removes them), U+2581, emoji and unknown scripts, special-token spellings, empty and
    over-long captions."""
    rng = random.Random(seed)
    pieces = WORDS + ["Кот", "ПЁС", "Red", "🐱", "猫", "<BOS>", "<EOS>", "<PAD>", "\u2581", "a", "", "123", "ёЁ"]
    spaces = [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2003", "\x1c", "\x0b", "\u2581"]
    captions = ["", " ", "\u3000кот\u3000", "\x1f пёс \x1c", "<BOS>", "КОТ НА СТОЛЕ", " ".join(WORDS * 4)]
    for _ in range(300):
        words = [rng.choice(pieces) for _ in range(rng.randint(1, 12))]
        caption = "".join(word + rng.choice(spaces) for word in words)
        captions.append(rng.choice(spaces) + caption if rng.random() < 0.3 else caption)
    return captions


def test_rudalle_attention_types_follow_its_layer_rule():
    assert rudalle_attention_types(8) == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    assert rudalle_attention_types(24)[-1] == "conv" and rudalle_attention_types(24).count("column") == 6
    # The last layer is a column layer when the column rule picks it (ruDALL-E checks that rule first).
    assert rudalle_attention_types(6)[-1] == "column"


def test_released_model_configs():
    malevich = rudalle_dalle_config({**RUDALLE_MODELS["Malevich"].model_params, "hf_version": "v3"})
    assert (malevich.max_text_length, malevich.text_vocab_size, malevich.vocab_size) == (128, 16512, 16512 + 8192)
    assert (malevich.conv_window, malevich.image_mask_offset, malevich.hidden_act) == ("clipped", 0, "gelu_tanh")
    assert malevich.sandwich_layernorm and malevich.head_layernorm
    emojich = rudalle_dalle_config({**RUDALLE_MODELS["Emojich"].model_params, "hf_version": "v2"})
    assert (emojich.max_text_length, emojich.image_mask_offset, emojich.conv_window) == (129, 1, "torus")
    kandinsky = rudalle_dalle_config(dict(RUDALLE_MODELS["Kandinsky"].model_params))
    assert (kandinsky.num_hidden_layers, kandinsky.hidden_size, kandinsky.num_attention_heads) == (64, 3840, 60)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"num_layers": 2}, "lacks"),
        ({**RUDALLE_MODELS["Malevich"].model_params, "num_heads": 4}, "unknown keys \\['num_heads'\\]"),
        ({**RUDALLE_MODELS["Malevich"].model_params, "hf_version": "v4"}, "`hf_version` must be 'v2' or 'v3'"),
        ({**RUDALLE_MODELS["Malevich"].model_params, "vocab_size": 100}, "must exceed `text_seq_length`"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_rudalle_config_errors(params, message):
    with pytest.raises(ValueError, match=message):
        rudalle_dalle_config(params)


@pytest.mark.parity
@pytest.mark.parametrize("hf_version", ["v3", "v2"])
def test_tokenizer_gives_rudalle_ids(hf_version, tmp_path, monkeypatch):
    tokenizer_module = import_rudalle(monkeypatch, "rudalle.tokenizer")
    import youtokentome as yttm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(caption_corpus(3000, seed=0) + ["Red cat 123"]), encoding="utf-8")
    yttm.BPE.train(data=str(corpus), model=str(tmp_path / "bpe.model"), vocab_size=300, coverage=0.999)
    reference = tokenizer_module.YTTMTokenizerWrapper(yttm.BPE(model=str(tmp_path / "bpe.model")))

    text_length = 24
    params = {**RUDALLE_MODELS["Malevich"].model_params, "text_seq_length": text_length, "hf_version": hf_version}
    tokenizer = rudalle_tokenizer(tmp_path / "bpe.model", rudalle_dalle_config(params))
    captions = tricky_captions(seed=1)
    # As `generate_images` does: lowercase and strip, then [BOS] ids [EOS] cut to the text length, 0-padded; v2's
    # model puts one more BOS in front.
    expected = torch.stack([reference.encode_text(c.lower().strip(), text_seq_length=text_length) for c in captions])
    if hf_version == "v2":
        expected = torch.nn.functional.pad(expected, (1, 0), value=2)
    ids = tokenizer.encode_captions(captions)
    mismatches = [c for c, a, b in zip(captions, ids, expected) if not torch.equal(a, b)]
    assert not mismatches, f"{len(mismatches)} of {len(captions)} captions differ, e.g. {mismatches[:3]}"
    assert (expected[:, -1] != 0).any() and (expected[:, -1] != 3).any()  # some captions lost their EOS to the cut
    assert (expected == 1).any()  # and some hold unknown characters

    reloaded = type(tokenizer).from_pretrained(tokenizer.save_pretrained(tmp_path / "saved")[0].rsplit("/", 1)[0])
    assert torch.equal(reloaded.encode_captions(captions), ids)


def tiny_params(hf_version="v3", num_layers=4, hidden_size=32, text_seq_length=8, grid=4, caption_vocab=16):
    return {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": 2,
        "text_seq_length": text_seq_length,
        "image_tokens_per_dim": grid,
        "vocab_size": caption_vocab + text_seq_length,
        "image_vocab_size": 32,
        "cogview_sandwich_layernorm": True,
        "hf_version": hf_version,
    }


def test_sharded_conversion_loads_the_same_weights(tmp_path):
    params = tiny_params()
    state_dict = random_rudalle_state_dict(params)
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    convert_rudalle(tmp_path / "pytorch_model.bin", params, single)
    convert_rudalle(tmp_path / "pytorch_model.bin", params, sharded, max_shard_bytes=20_000)
    shards = sorted(p.name for p in (sharded / "transformer").glob("*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert [p.name for p in (single / "transformer").glob("*.safetensors")] == ["model.safetensors"]
    a = DalleForImageGeneration.from_pretrained(single / "transformer", dtype=torch.float32).state_dict()
    b = DalleForImageGeneration.from_pretrained(sharded / "transformer", dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Weights kept in their dtype (float16), and mapped: the stream table is the text table, then the image table.
    loaded = DalleForImageGeneration.from_pretrained(single / "transformer")
    assert loaded.dtype == torch.float16
    table = loaded.model.embeddings.token_embedding.weight
    assert torch.equal(table, torch.cat([state_dict["text_embeddings.weight"], state_dict["image_embeddings.weight"]]))
    assert torch.equal(
        loaded.model.layers[3].mlp.fc_out.bias, state_dict["transformer.layers.3.mlp.dense_4h_to_h.bias"]
    )
    generation = json.loads((single / "transformer" / "generation_config.json").read_text())
    assert (generation["top_k"], generation["top_p"], generation["do_sample"]) == (2048, 0.995, True)


def test_conversion_errors_name_the_problem(tmp_path):
    params = tiny_params()
    state_dict = random_rudalle_state_dict(params)
    del state_dict["transformer.layers.2.mlp.dense_h_to_4h.bias"]
    torch.save(state_dict, tmp_path / "missing.bin")
    with pytest.raises(ValueError, match=r"missing \['transformer.layers.2.mlp.dense_h_to_4h.bias'\]"):
        convert_rudalle(tmp_path / "missing.bin", params, tmp_path / "out")
    assert not (tmp_path / "out" / "transformer").exists()  # nothing half written
    torch.save(random_rudalle_state_dict(params), tmp_path / "ok.bin")
    with pytest.raises(ValueError, match=r"unexpected \['transformer.layers.3"):
        convert_rudalle(tmp_path / "ok.bin", {**params, "num_layers": 3}, tmp_path / "out")
    with pytest.raises(
        ValueError, match=r"ok.bin.: .text_embeddings.weight. has shape \(24, 32\), but the ruDALL-E config"
    ):
        convert_rudalle(tmp_path / "ok.bin", {**params, "vocab_size": 30}, tmp_path / "out")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        convert_rudalle(tmp_path / "junk.bin", params, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        convert_rudalle(tmp_path / "absent.bin", params, tmp_path / "out")


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda sd: sd.update({"transformer.layers.1.mlp.dense_4h_to_h.weight": torch.zeros(32, 64)}),
            r"'transformer.layers.1.mlp.dense_4h_to_h.weight' has shape \(32, 64\), but the ruDALL-E config \(4 layers, "
            r"hidden size 32, sandwich LayerNorm True\) gives \(32, 128\)",
        ),
        (
            lambda sd: sd["transformer.layers.2.attention.dense.weight"].__setitem__((0, 1), float("nan")),
            r"'transformer.layers.2.attention.dense.weight' holds NaN or infinite values: the file is damaged",
        ),
        (
            lambda sd: sd["image_embeddings.weight"].__setitem__((3, 0), float("-inf")),
            r"'image_embeddings.weight' holds NaN or infinite values",
        ),
    ],
    ids=["wrong shape", "nan", "inf"],
)
def test_every_tensor_is_checked_before_anything_is_written(tmp_path, damage, message):
    params = tiny_params()
    state_dict = random_rudalle_state_dict(params)
    damage(state_dict)
    torch.save(state_dict, tmp_path / "damaged.bin")
    with pytest.raises(ValueError, match=message):
        convert_rudalle(tmp_path / "damaged.bin", params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_config_cannot_ask_for_more_layers_than_the_checkpoint_holds(tmp_path):
    params = tiny_params()
    torch.save(random_rudalle_state_dict(params), tmp_path / "ok.bin")
    with pytest.raises(ValueError, match=r"asks for 1000000000 layers, but .*ok.bin' holds 4"):
        convert_rudalle(tmp_path / "ok.bin", {**params, "num_layers": 10**9}, tmp_path / "out")
    with pytest.raises(ValueError, match=r"sizes must be positive integers, got hidden_size=-32"):
        convert_rudalle(tmp_path / "ok.bin", {**params, "hidden_size": -32}, tmp_path / "out")


def test_script_converts_from_the_hub(hub_server, tmp_path, monkeypatch, capsys):
    """`--from_hub` downloads ruDALL-E's files under their released repo ids and names (small stand-ins here)."""
    from huggingface_hub import HfApi

    convert_script = load_script("convert_rudalle")
    params = tiny_params()
    release = RUDALLE_MODELS["Malevich"]
    monkeypatch.setitem(RUDALLE_MODELS, "Malevich", type(release)("v3", params, release.repo_id, release.filename))
    torch.save(random_rudalle_state_dict(params), tmp_path / release.filename)
    write_model(tmp_path / "bpe.model", {"\u2581": 4, "к": 5, "о": 6, "т": 7}, [(4, 5, 8), (6, 7, 9), (8, 9, 10)])
    api = HfApi()
    for repo_id, filename in ((release.repo_id, release.filename), ("shonenkov/rudalle-utils", "bpe.model")):
        api.create_repo(repo_id, exist_ok=True)
        api.upload_file(path_or_fileobj=tmp_path / filename, path_in_repo=filename, repo_id=repo_id)

    output_dir = tmp_path / "converted"
    convert_script.main(["--from_hub", "--model_name", "Malevich", "--output_dir", str(output_dir)])
    assert "written to" in capsys.readouterr().out
    model = DalleForImageGeneration.from_pretrained(output_dir / "transformer")
    assert model.config.num_hidden_layers == 4 and model.config.conv_window == "clipped"
    tokenizer = DalleTokenizer.from_pretrained(output_dir / "tokenizer")
    assert tokenizer.encode_captions("  КОТ кот").tolist() == [[2, 10, 10, 3, 0, 0, 0, 0]]
    card = (output_dir / "README.md").read_text()
    assert "Malevich" in card and "--from_hub" in card


RUCLIP_CONFIG = {
    "embed_dim": 16,
    "image_resolution": 32,
    "vision_layers": 1,
    "vision_width": 64,  # one head of 64, as ruCLIP derives them
    "vision_patch_size": 16,
    "context_length": 8,
    "transformer_width": 32,
    "transformer_heads": 2,
    "transformer_layers": 1,
}


def test_script_writes_a_complete_pipeline(hub_server, tmp_path):
    """The README's command line, run as a subprocess: the transformer from a local checkpoint, the tokenizer and the
    Sber VQGAN downloaded with `--from_hub` (from the loopback Hub, under ruDALL-E's repo id and file names), ruCLIP
    from a folder. The result loads as a `DallePipeline` whose VQGAN and reranker are the ones given, and draws."""
    from huggingface_hub import HfApi

    params = {**tiny_params(grid=8), "image_vocab_size": 64}  # small_taming_config: 64 codes, 32x32 -> 8x8
    write_tiny_rudalle(params, tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "vqgan.yml").write_text(yaml.safe_dump(small_taming_config()))
    vqgan_filename = RUDALLE_VQGAN_FILENAMES[False]
    taming = random_taming_vqgan_state_dict(  # small_taming_config's sizes, as ruDALL-E's GumbelVQ lays them out
        vocab_size=64, embed_dim=32, latent_channels=32, block_out_channels=(32, 64, 64), layers_per_block=1,
        attention_levels=(2,), with_encoder=True, gumbel=True,
    )  # fmt: skip
    torch.save({"state_dict": taming}, tmp_path / vqgan_filename)
    ruclip_dir = tmp_path / "ruclip"
    ruclip_dir.mkdir()
    write_model(ruclip_dir / "bpe.model", {"\u2581": 4, "к": 5, "о": 6, "т": 7}, [(4, 5, 8), (6, 7, 9), (8, 9, 10)])
    ruclip_config = {**RUCLIP_CONFIG, "vocab_size": 11}
    (ruclip_dir / "config.json").write_text(json.dumps(ruclip_config))
    torch.save(random_ruclip_state_dict(ruclip_config), ruclip_dir / "pytorch_model.bin")
    api = HfApi()
    api.create_repo(RUDALLE_UTILS_REPO)
    for filename in ("bpe.model", vqgan_filename):
        api.upload_file(path_or_fileobj=tmp_path / filename, path_in_repo=filename, repo_id=RUDALLE_UTILS_REPO)

    output_dir = tmp_path / "converted"
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "convert_rudalle.py"), "--rudalle_config",
        str(tmp_path / "params.json"), "--checkpoint", str(tmp_path / "pytorch_model.bin"), "--from_hub",
        "--vqgan_config", str(tmp_path / "vqgan.yml"), "--ruclip_dir", str(ruclip_dir), "--output_dir", str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "subprocess_cache")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "+ tokenizer + VQGAN + ruCLIP written to" in result.stdout

    assert sorted(path.name for path in output_dir.iterdir()) == [
        "README.md", "clip_model", "clip_processor", "model_index.json", "tokenizer", "transformer", "vae",
    ]  # fmt: skip
    pipe = DallePipeline.from_pretrained(output_dir)
    expected_vqgan = convert_sber_vqgan(tmp_path / vqgan_filename, tmp_path / "vqgan.yml")
    expected_clip, _ = convert_ruclip(ruclip_dir)
    for ours, expected in ((pipe.vae, expected_vqgan), (pipe.clip_model, expected_clip)):
        assert ours.state_dict().keys() == expected.state_dict().keys()
        for name, tensor in expected.state_dict().items():
            assert torch.equal(ours.state_dict()[name], tensor), name
    assert pipe.tokenizer.encode_captions("кот").tolist() == [[2, 13, 3, 0, 0, 0, 0, 0]]  # write_tiny_rudalle's ids
    card = (output_dir / "README.md").read_text()
    assert "(safetensors, float16)" in card  # the checkpoint's dtype (random_rudalle_state_dict's), not "None"

    output = pipe("кот", num_candidates=2, num_images_per_prompt=1, generator=torch.Generator().manual_seed(0))
    assert output.images[0].size == (32, 32) and len(output.scores) == 1
    codes = pipe.vae.encode(torch.rand(1, 3, 32, 32)).indices
    assert codes.shape == (1, 8, 8) and int(codes.max()) < 64


def test_script_rejects_bad_arguments(tmp_path):
    convert_script = load_script("convert_rudalle")
    with pytest.raises(SystemExit):
        convert_script.main(["--model_name", "Malevich", "--output_dir", str(tmp_path)])  # no --checkpoint
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read --rudalle_config"):
        convert_script.main(["--rudalle_config", str(tmp_path / "config.json"), "--checkpoint", "x.bin",
                             "--output_dir", str(tmp_path / "out")])  # fmt: skip
    # A tokenizer file that is no YouTokenToMe model (a surrogate code point): an error naming it, no traceback.
    params = tiny_params()
    (tmp_path / "params.json").write_text(json.dumps(params))
    torch.save(random_rudalle_state_dict(params), tmp_path / "ok.bin")
    write_model(tmp_path / "bpe.model", {"\u2581": 4, "\udfff": 5}, [])
    with pytest.raises(SystemExit, match=r"error: .*bpe.model: character code 57343 is not a Unicode character"):
        convert_script.main(["--rudalle_config", str(tmp_path / "params.json"), "--checkpoint", str(tmp_path / "ok.bin"),
                             "--tokenizer", str(tmp_path / "bpe.model"), "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out").exists()


def convert_reference(model, tmp_path) -> DalleForImageGeneration:
    """Save a ruDALL-E model as its released file, convert it, and load the result in float32."""
    save_rudalle_checkpoint(model, tmp_path / "pytorch_model.bin")
    convert_rudalle(tmp_path / "pytorch_model.bin", model.model_params, tmp_path / "converted")
    return DalleForImageGeneration.from_pretrained(tmp_path / "converted" / "transformer", dtype=torch.float32).eval()


def to_our_stream(model, rudalle_ids: torch.LongTensor) -> torch.LongTensor:
    """ruDALL-E's input ids (`text_seq_length` caption ids, then codes) as a hf_dalle stream: codes offset by the text
    vocabulary, and v2's extra BOS in front, which ruDALL-E's model adds itself."""
    text, codes = rudalle_ids[:, : model.text_seq_length], rudalle_ids[:, model.text_seq_length :]
    if model.hf_version == "v2":
        text = torch.nn.functional.pad(text, (1, 0), value=2)
    return torch.cat([text, codes + model.vocab_size], dim=1)


@pytest.mark.parity
@pytest.mark.parametrize("hf_version", ["v3", "v2"])
def test_converted_transformer_matches_rudalle(hf_version, tmp_path):
    """Logits of full streams (two captions, one filling every text position), and each layer's attention mask."""
    reference = build_rudalle_model(hf_version)
    ours = convert_reference(reference, tmp_path)
    generator = torch.Generator().manual_seed(1)
    captions = torch.stack(
        [rudalle_caption_ids(reference, 5, generator), rudalle_caption_ids(reference, 14, generator)]
    )
    image_vocab_size = reference.total_vocab_size - reference.vocab_size
    codes = torch.randint(0, image_vocab_size, (2, reference.image_seq_length), generator=generator)
    rudalle_ids = torch.cat([captions, codes], dim=1)
    total = reference.total_seq_length
    with torch.no_grad():
        expected, _ = reference(rudalle_ids, torch.ones(2, 1, total, total))
        stream = to_our_stream(reference, rudalle_ids)
        logits = ours(stream).logits[:, : expected.shape[1]]  # v2: ruDALL-E drops the last code's position
    text_vocab, text_length = ours.config.text_vocab_size, ours.config.max_text_length
    # Where a text token comes next, the text logits; where an image code comes next, the image logits.
    torch.testing.assert_close(logits[:, : text_length - 1, :text_vocab], expected[:, : text_length - 1, :text_vocab],
                               atol=1e-4, rtol=0)  # fmt: skip
    torch.testing.assert_close(logits[:, text_length - 1 :, text_vocab:], expected[:, text_length - 1 :, text_vocab:],
                               atol=1e-4, rtol=0)  # fmt: skip
    assert expected[:, text_length - 1 :, text_vocab:].std() > 0.3  # logits that differ from code to code

    masks = build_attention_masks(ours.config)
    size = reference.transformer.row_mask.shape[0]  # ruDALL-E's masks span text_seq_length + grid**2 positions
    for layer, kind in enumerate(ours.config.attention_types):
        assert torch.equal(masks[kind][:size, :size], reference.transformer._get_layer_mask(layer).bool()), (
            layer,
            kind,
        )


@pytest.mark.parity
@pytest.mark.parametrize("hf_version", ["v3", "v2"])
def test_malevich_sized_masks_match_rudalle(hf_version):
    """At the released models' 128 text positions and 32x32 grid (where v3's clipped window and the raster window
    differ in thousands of pairs), every mask type equals ruDALL-E's."""
    image_attention = import_reference("rudalle.dalle.image_attention")
    config = rudalle_dalle_config(
        {**RUDALLE_MODELS["Malevich"].model_params, "num_layers": 4, "hf_version": hf_version}
    )
    masks = build_attention_masks(config)
    size = 128 + 32 * 32
    expected = {
        "row": image_attention.get_row_mask(128, 32, is_bool_mask=True),
        "column": image_attention.get_col_mask(128, 32, is_bool_mask=True),
        "conv": image_attention.get_conv_mask(128, 32, is_bool_mask=True, hf_version=hf_version),
    }
    for kind, mask in expected.items():
        assert torch.equal(masks[kind][:size, :size], mask), kind


@pytest.mark.parity
@pytest.mark.parametrize("hf_version", ["v3", "v2"])
def test_greedy_codes_match_rudalle_generate_images(hf_version, tmp_path, monkeypatch):
    """ruDALL-E's own `generate_images` loop (its cache, top-1) and our cached `generate` pick the same 256 codes."""
    pipelines = import_rudalle(monkeypatch)
    reference = build_rudalle_model(hf_version)
    ours = convert_reference(reference, tmp_path)
    caption = rudalle_caption_ids(reference, 6, torch.Generator().manual_seed(2))
    expected, _ = rudalle_generate_codes(pipelines, reference, caption, images_num=1, top_k=1, top_p=1.0)
    stream = to_our_stream(reference, caption[None])
    with torch.no_grad():
        generated = ours.generate(stream, do_sample=False, max_new_tokens=ours.config.image_seq_length)
    codes = ours.image_codes_from_ids(generated).flatten(1)
    assert torch.equal(codes, expected)
    assert len(codes.unique()) > 4  # not a degenerate run of one code


def test_pipeline_runs_a_converted_model_with_its_sampling_defaults(tmp_path):
    """A converted tiny ruDALL-E (transformer + tokenizer) in a DallePipeline, with a tiny dVAE of its code count:
    saved, reloaded, and sampling with the transformer's generation_config unless the call says otherwise."""
    params = tiny_params()
    torch.save(random_rudalle_state_dict(params), tmp_path / "pytorch_model.bin")
    write_model(tmp_path / "bpe.model", {"\u2581": 4, "к": 5, "о": 6, "т": 7}, [(4, 5, 8), (6, 7, 9), (8, 9, 10)])
    convert_rudalle(tmp_path / "pytorch_model.bin", params, tmp_path / "converted", tokenizer=tmp_path / "bpe.model")
    vae = make_tiny_pipeline(with_clip=False).vae
    pipe = DallePipeline(
        tokenizer=DalleTokenizer.from_pretrained(tmp_path / "converted" / "tokenizer"),
        transformer=DalleForImageGeneration.from_pretrained(
            tmp_path / "converted" / "transformer", dtype=torch.float32
        ),
        vae=vae,
    )
    pipe.save_pretrained(tmp_path / "pipeline")
    pipe = DallePipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.transformer.generation_config.top_k == 2048 and pipe.transformer.config.sandwich_layernorm

    def draw(seed, **sampling):
        generator = torch.Generator().manual_seed(seed)
        return pipe("Кот", num_candidates=1, generator=generator, output_type="pt", **sampling).images

    assert not torch.equal(draw(0), draw(1))
    pipe.transformer.generation_config.top_k = 1  # the pipeline's default now: greedy, whatever the seed
    assert torch.equal(draw(0), draw(1))
    assert not torch.equal(draw(0, top_k=0), draw(1, top_k=0))  # unless the call names its own


def capture_codes(pipe, monkeypatch) -> list:
    """Record the code grids `pipe.sample_codes` finishes (the last codes it yields)."""
    captured, sample_codes = [], pipe.sample_codes

    def recording(*args, **kwargs):
        for codes in sample_codes(*args, **kwargs):
            yield codes
        captured.append(codes)

    monkeypatch.setattr(pipe, "sample_codes", recording)
    return captured


def test_image_prompt_fixes_codes_at_any_grid_position(monkeypatch):
    """ruDALL-E's image prompts: a border of the image's codes (left column, bottom row) kept, the rest sampled."""
    pipe = make_tiny_pipeline(with_clip=False)
    captured = capture_codes(pipe, monkeypatch)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    image_codes = pipe.vae.encode(image[None]).indices.flatten()
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 0] = mask[-1, :] = True
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        pipe("a red circle", num_candidates=2, image=image, image_prompt_mask=mask, generator=generator)
    codes = torch.cat(captured)
    assert (codes[:, mask.flatten()] == image_codes[mask.flatten()]).all()
    assert len({tuple(row) for row in codes[:, ~mask.flatten()].tolist()}) > 1  # the rest is sampled
    with pytest.raises(ValueError, match="`image_prompt_mask` must be 4x4 booleans"):
        pipe("a red circle", num_candidates=1, image=image, image_prompt_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs an `image`"):
        pipe("a red circle", num_candidates=1, image_prompt_mask=mask)


def test_image_prompt_mask_takes_booleans_or_zeros_and_ones_only():
    """A 0/1 integer mask (list, NumPy, tensor) is the boolean one; a float mask has no one reading (0.5? NaN would
    be True and fix the whole image), a string is no mask: both refused before anything is sampled."""
    pipe = make_tiny_pipeline(with_clip=False)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 0] = True

    def images(prompt_mask):
        generator = torch.Generator().manual_seed(1)
        return pipe(
            "a red circle", num_candidates=1, image=image, image_prompt_mask=prompt_mask, generator=generator,
            output_type="pt",
        ).images  # fmt: skip

    expected = images(mask)
    for integers in (mask.int().tolist(), mask.numpy().astype(np.uint8), mask.long()):
        assert torch.equal(images(integers), expected)
    for bad, kind in (
        ("all", "str"),
        (torch.full((4, 4), 0.5), "Tensor of torch.float32"),
        (np.full((4, 4), np.nan), "ndarray of torch.float64"),
        ([[1.0] * 4] * 4, "list of torch.float64"),
        (-torch.ones(4, 4, dtype=torch.long), "other integers"),
        (2 * mask.int(), "other integers"),
    ):
        with pytest.raises(ValueError, match=rf"`image_prompt_mask` must hold booleans \(or the integers 0 and 1\), got "
                           rf"(a )?{kind}"):  # fmt: skip
            images(bad)


def test_rerank_by_the_transformers_perplexity(monkeypatch):
    pipe = make_tiny_pipeline(with_clip=False)
    captured = capture_codes(pipe, monkeypatch)
    output = pipe("a red circle", num_candidates=6, num_images_per_prompt=6, rerank="perplexity", output_type="pt",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    codes = captured[0]
    # The perplexity of each candidate, from a plain forward pass over its whole stream.
    config = pipe.transformer.config
    text = pipe.tokenizer.encode_captions(["a red circle"] * 6)
    with torch.no_grad():
        logits = pipe.transformer(pipe.transformer.prepare_input_ids(text, codes)).logits
    image_logits = logits[:, config.max_text_length - 1 : -1, config.text_vocab_size :]
    expected = torch.nn.functional.cross_entropy(image_logits.transpose(1, 2), codes, reduction="none").mean(1).exp()
    torch.testing.assert_close(torch.tensor(output.scores), expected.sort().values)
    assert output.scores[0] < output.scores[-1]
    with pytest.raises(ValueError, match="`rerank` must be 'clip'"):
        pipe("a red circle", num_candidates=2, rerank="clip")


def write_tiny_rudalle(params: dict, folder: Path) -> None:
    """A random ruDALL-E checkpoint for `params` and a YTTM `bpe.model` that spells кот and пёс, in `folder`."""
    torch.save(random_rudalle_state_dict(params), folder / "pytorch_model.bin")
    chars = {"\u2581": 4, "к": 5, "о": 6, "т": 7, "п": 8, "ё": 9, "с": 10}
    write_model(folder / "bpe.model", chars, [(4, 5, 11), (6, 7, 12), (11, 12, 13), (4, 8, 14), (9, 10, 15)])


def write_image_folder(folder: Path) -> list[Image.Image]:
    """\"My pictures\": an imagefolder of eight random 32x32 images captioned in Russian; returns the images."""
    folder.mkdir()
    captions, images = ["Кот", "пёс", "кот пёс", "Пёс кот кот"], []
    with open(folder / "metadata.jsonl", "w") as metadata:
        for index, caption in enumerate(captions * 2):
            images.append(Image.fromarray(np.random.default_rng(index).integers(0, 255, (32, 32, 3), dtype=np.uint8)))
            images[-1].save(folder / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "text": caption}, ensure_ascii=False) + "\n")
    return images


def pretokenize_and_fine_tune(pipeline: Path, tmp_path: Path) -> tuple[list[Image.Image], Path]:
    """Pre-tokenize an imagefolder with `pipeline`'s image tokenizer and ruDALL-E tokenizer, then train all weights
    (`tmp_path / "full"`) and a LoRA adapter (`tmp_path / "lora"`) from it; returns the images and the tokens."""
    images, tokens = write_image_folder(tmp_path / "my_images"), tmp_path / "tokens"
    load_script("pretokenize").main(
        ["--train_data_dir", str(tmp_path / "my_images"), "--caption_column", "text",
         "--pretrained_model_name_or_path", str(pipeline), "--output_dir", str(tokens)]
    )  # fmt: skip
    text_ids = load_pretokenized_dataset(str(tokens))[:]["text_input_ids"]
    assert text_ids[0].tolist() == [2, 13, 3, 0, 0, 0, 0, 0]  # ruDALL-E's [BOS] "▁кот" [EOS] then pads
    common = ["--pretrained_model_name_or_path", str(pipeline), "--pretokenized_dataset", str(tokens),
              "--max_train_steps", "2", "--train_batch_size", "4", "--logging_steps", "1",
              "--checkpointing_steps", "100", "--validation_steps", "100"]  # fmt: skip
    load_script("train_dalle").main([*common, "--output_dir", str(tmp_path / "full")])
    load_script("train_dalle").main([*common, "--lora_rank", "4", "--output_dir", str(tmp_path / "lora")])
    return images, tokens


def assert_fine_tuned(pipeline: Path, tmp_path: Path, grid_size: int) -> None:
    """The full run changed ruDALL-E's own weights (sandwich norms, head norm) and kept its options; the adapter
    changes the base pipeline's logits and unloads cleanly."""
    before = DalleForImageGeneration.from_pretrained(pipeline / "transformer", dtype=torch.float32).state_dict()
    after = DalleForImageGeneration.from_pretrained(tmp_path / "full" / "transformer")
    assert after.dtype == torch.float32  # trained in float32 from the float16 conversion
    assert after.config.sandwich_layernorm and after.config.conv_window == "clipped"
    changed = [n for n, p in after.state_dict().items() if not torch.equal(p, before[n])]
    assert "model.layers.0.attention_output_norm.weight" in changed and "model.head_norm.weight" in changed

    pipe = DallePipeline.from_pretrained(pipeline)
    codes = torch.arange(grid_size**2)[None] % pipe.transformer.config.image_vocab_size
    stream = pipe.transformer.prepare_input_ids(pipe.tokenizer.encode_captions(["кот"]), codes)

    def logits():
        with torch.no_grad():
            return pipe.transformer(stream).logits

    base = logits()
    pipe.load_lora_weights(tmp_path / "lora")
    assert not torch.allclose(logits(), base)  # the adapter trained
    pipe.unload_lora_weights()
    assert torch.equal(logits(), base)


@pytest.fixture
def converted_pipeline(tmp_path) -> Path:
    """A converted tiny ruDALL-E (transformer + tokenizer) with a tiny dVAE of its code count, saved as a pipeline."""
    params = tiny_params()
    write_tiny_rudalle(params, tmp_path)
    convert_rudalle(tmp_path / "pytorch_model.bin", params, tmp_path / "converted", tokenizer=tmp_path / "bpe.model")
    pipe = DallePipeline(
        tokenizer=DalleTokenizer.from_pretrained(tmp_path / "converted" / "tokenizer"),
        transformer=DalleForImageGeneration.from_pretrained(
            tmp_path / "converted" / "transformer", dtype=torch.float32
        ),
        vae=make_tiny_pipeline(with_clip=False).vae,
    )
    pipe.save_pretrained(tmp_path / "pipeline")
    return tmp_path / "pipeline"


def test_fine_tune_a_converted_model(converted_pipeline, tmp_path):
    """ "Fine-tune Malevich on my pictures", with a stand-in dVAE (no reference code needed; the VQGAN chain is
    `test_fine_tune_a_converted_model_with_its_vqgan`): pre-tokenize, train all weights and a LoRA adapter."""
    pretokenize_and_fine_tune(converted_pipeline, tmp_path)
    assert_fine_tuned(converted_pipeline, tmp_path, grid_size=4)


@pytest.mark.parity
def test_fine_tune_a_converted_model_with_its_vqgan(tmp_path, monkeypatch):
    """The whole chain of "fine-tune Malevich on my pictures": convert ruDALL-E's transformer, tokenizer and Sber
    VQGAN (ruDALL-E's own class, every weight perturbed, saved as its checkpoint), pre-tokenize the pictures with the
    converted VQGAN (the codes are ruDALL-E's `get_codebook_indices`), train all weights and a LoRA adapter, and
    generate with the tuned pipelines (the images are ruDALL-E's VQGAN decode of the drawn codes)."""
    reference_vae = reference_vqgan(dwt=False)  # 64 codes, 32x32 images -> 8x8 codes
    torch.save({"state_dict": reference_vae.model.state_dict()}, tmp_path / "vqgan.ckpt")
    (tmp_path / "vqgan.yml").write_text(yaml.safe_dump(small_taming_config()))
    params = {**tiny_params(grid=8), "image_vocab_size": 64}
    write_tiny_rudalle(params, tmp_path)
    convert_rudalle(tmp_path / "pytorch_model.bin", params, tmp_path / "converted", tokenizer=tmp_path / "bpe.model",
                    vqgan_checkpoint=tmp_path / "vqgan.ckpt", vqgan_config=tmp_path / "vqgan.yml")  # fmt: skip
    converted = tmp_path / "converted"

    images, tokens = pretokenize_and_fine_tune(converted, tmp_path)
    with torch.no_grad():
        expected = reference_vae.get_codebook_indices(
            torch.stack([image_to_tensor(image, 32) for image in images]), disable_gumbel_softmax=True
        )
    assert load_pretokenized_dataset(str(tokens))[:]["image_codes"].flatten(1).tolist() == expected.tolist()
    assert len(expected.unique()) > 8  # the perturbed VQGAN does not map every patch to one code

    assert_fine_tuned(converted, tmp_path, grid_size=8)
    with_adapter = DallePipeline.from_pretrained(converted)
    with_adapter.load_lora_weights(tmp_path / "lora")
    for pipe in (DallePipeline.from_pretrained(tmp_path / "full"), with_adapter):
        captured = capture_codes(pipe, monkeypatch)
        generator = torch.Generator().manual_seed(0)
        output = pipe("кот", num_candidates=2, num_images_per_prompt=2, output_type="pt", generator=generator)
        codes = captured[-1].flatten(1)
        with torch.no_grad():
            torch.testing.assert_close(output.images, reference_vae.decode(codes), atol=1e-4, rtol=0)
        assert output.images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("hf_version", ["v3", "v2"])
def test_cached_decoding_equals_full_forward_with_rudalle_options(hf_version, tmp_path):
    """Sparse cached decode steps (views of the few keys a row, column, clipped or torus window allows) give the
    codes of uncached greedy decoding, with v2's mask offset too."""
    params = tiny_params(hf_version, num_layers=8, grid=16, text_seq_length=8)
    torch.save(random_rudalle_state_dict(params), tmp_path / "pytorch_model.bin")
    convert_rudalle(tmp_path / "pytorch_model.bin", params, tmp_path / "converted")
    model = DalleForImageGeneration.from_pretrained(tmp_path / "converted" / "transformer", dtype=torch.float32)
    config = model.config
    text = torch.tensor([[2, 5, 9, 3] + [0] * (config.max_text_length - 4)])
    with torch.no_grad():
        cached = model.generate(text, do_sample=False, max_new_tokens=config.image_seq_length)
        uncached = model.generate(text, do_sample=False, max_new_tokens=config.image_seq_length, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parity
def test_converted_pipeline_draws_the_reference_chains_top1_image(tmp_path, monkeypatch):
    """The whole ruDALL-E chain against the converted pipeline at top-1: ruDALL-E's tokenizer (YouTokenToMe), its
    `generate_images` loop and its VQGAN decode, versus `DallePipeline` from the converted folder (tokenizer,
    transformer, VQGAN: `convert_rudalle` with all three, `model_index.json` included)."""
    pipelines = import_rudalle(monkeypatch)
    tokenizer_module = import_rudalle(monkeypatch, "rudalle.tokenizer")
    import youtokentome as yttm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(caption_corpus(2000, seed=3)), encoding="utf-8")
    yttm.BPE.train(data=str(corpus), model=str(tmp_path / "bpe.model"), vocab_size=200, coverage=1.0)
    reference_tokenizer = tokenizer_module.YTTMTokenizerWrapper(yttm.BPE(model=str(tmp_path / "bpe.model")))
    # The VQGAN of issue "VQGAN image tokenizers": Sber's layout at test size (64 codes, 32x32 images -> 8x8 codes).
    reference_vae = reference_vqgan(dwt=False)
    torch.save({"state_dict": reference_vae.model.state_dict()}, tmp_path / "vqgan.ckpt")
    (tmp_path / "vqgan.yml").write_text(yaml.safe_dump(small_taming_config()))
    reference = build_rudalle_model(
        "v3", image_tokens_per_dim=8, caption_vocab_size=reference_tokenizer.vocab_size(), image_vocab_size=64
    )
    save_rudalle_checkpoint(reference, tmp_path / "pytorch_model.bin")
    convert_rudalle(tmp_path / "pytorch_model.bin", reference.model_params, tmp_path / "converted",
                    tokenizer=tmp_path / "bpe.model", vqgan_checkpoint=tmp_path / "vqgan.ckpt",
                    vqgan_config=tmp_path / "vqgan.yml")  # fmt: skip
    pipe = DallePipeline.from_pretrained(tmp_path / "converted", torch_dtype=torch.float32)

    caption = "  Рыжий пёс летит над городом "
    with torch.no_grad():
        images, _ = pipelines.generate_images(
            caption, reference_tokenizer, reference, reference_vae, top_k=1, top_p=1.0, images_num=1, bs=1
        )
    expected = images[0].tensor[None]
    output = pipe(caption, num_candidates=1, top_k=1, output_type="pt", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(output.images, expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.05


def test_clip_prompt_templates_average_the_text_embeddings(tmp_path):
    """ruCLIP's reranking: the prompt's embedding is the mean over its templates (then normalised), kept in
    model_index.json."""
    pipe = make_tiny_pipeline()
    plain = pipe.clip_text_embeds(["a red circle"])
    templates = ["{}", "the {}", "photo {}"]  # the tiny CLIP pools its first token: change it
    pipe = DallePipeline(**pipe.components, clip_prompt_templates=templates)
    pipe.save_pretrained(tmp_path / "pipe")
    pipe = DallePipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.config.clip_prompt_templates == templates
    processor, model = pipe.clip_processor, pipe.clip_model
    with torch.no_grad():
        each = [model.get_text_features(**processor.tokenizer([t.format("a red circle")], return_tensors="pt"))
                for t in templates]  # fmt: skip
    mean = torch.stack([getattr(e, "pooler_output", e) for e in each]).mean(0)
    torch.testing.assert_close(pipe.clip_text_embeds(["a red circle"]), mean / mean.norm(dim=-1, keepdim=True))
    assert not torch.allclose(pipe.clip_text_embeds(["a red circle"]), plain)
    with pytest.raises(ValueError, match="one `{}` each"):
        DallePipeline(**pipe.components, clip_prompt_templates=["no slot"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"conv_window": "wrapped"}, "Unknown `conv_window` 'wrapped'"),
        ({"hidden_act": "relu"}, "Unknown `hidden_act` 'relu'"),
        ({"image_mask_offset": 8}, "`image_mask_offset` must be in \\[0, max_text_length=8\\)"),
    ],
)
def test_rudalle_config_options_are_checked(options, message):
    with pytest.raises(Exception, match=message):
        DalleConfig(max_text_length=8, image_grid_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    **options)  # fmt: skip
