#!/usr/bin/env python
"""Train a CLIP model (transformers `CLIPModel`) contrastively on image-caption pairs, to rerank DALL-E samples.

    accelerate launch scripts/train_clip.py --train_data_dir my_images --resolution 64 --output_dir my-clip

`scripts/train_dalle.py --clip_model_name_or_path my-clip` ships the result in the pipeline it writes.

From scratch the architecture is small (override with --model_config '{"text_config": {...}, "vision_config": {...},
"projection_dim": N}'), the tokenizer is the BPE of --tokenizer_name_or_path (e.g. the pipeline's DalleTokenizer) or
one trained on the captions, with an end-of-text token appended to every caption (CLIP pools the text at that token),
and the image processor is a `CLIPImageProcessor` (PIL backend) for --resolution. Every --validation_steps it logs the
image-to-caption retrieval accuracy on held-back pairs. The output folder holds the `CLIPModel` and its
`CLIPProcessor`, both loadable offline with `from_pretrained(OUTPUT_DIR)`, plus a model card.

A reranker must tell "a red circle above a blue square" from "a blue circle above a red square", which in-batch
negatives rarely ask of it: with --hard_negatives every image is also contrasted with another caption *of the training
data* that differs from its own in one word or by two words trading places (NegCLIP, Yuksekgonul et al. 2023), and
the validation also reports how often an image's own caption outscores all such neighbours. And it must rank a clean
drawing above one with a few cells drawn wrong, the typical error of an image-token generator, which clean training
drawings never show it: with --cell_swap_negatives S a share S of each batch is also shown with one or two
patch-sized cells copied from another image, as images every caption must score below its own. On shapes-world data
(hf_dalle.data), --shape_swap_negatives S also shows a share S of the batch with one object redrawn as another shape
(`redraw_with_another_shape`: the new scene is always a training caption, so nothing held out is drawn), which asks
the reranker the transformer's commonest zero-shot mistake, a held-out pairing drawn with a seen shape of its color.
"""

import argparse
import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCardData
from tokenizers import Tokenizer, processors
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

from hf_dalle import DalleTokenizer
from hf_dalle.data import parse_caption, redraw_with_another_shape
from hf_dalle.hub_utils import write_card_and_push
from hf_dalle.image_utils import to_rgb
from hf_dalle.io_utils import write_folder_atomically
from hf_dalle.training import (
    TrainingConfig,
    add_common_arguments,
    add_data_arguments,
    averaged_weights,
    check_batch_size,
    check_common_arguments,
    create_accelerator,
    create_ema,
    load_component,
    load_image_caption_dataset,
    make_dataloader,
    parse_model_config,
    save_model,
    train,
    training_summary,
)


logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
# CLIP's own normalisation statistics (OpenAI's image preprocessing).
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, learning_rate=5e-4, train_batch_size=64, max_train_steps=2000)
    add_data_arguments(parser, resolution=64)
    clip = parser.add_argument_group("CLIP")
    clip.add_argument(
        "--tokenizer_name_or_path",
        default=None,
        help="A BPE tokenizer (or pipeline with tokenizer/) to build the CLIP tokenizer from; default: train one.",
    )
    clip.add_argument(
        "--vocab_size", type=int, default=1024, help="Vocabulary of a tokenizer trained on the captions."
    )
    clip.add_argument("--max_text_length", type=int, default=32, help="Text positions of the CLIP text encoder.")
    clip.add_argument(
        "--num_validation_pairs",
        type=int,
        default=64,
        help="Pairs (the first of the data) for the retrieval accuracy.",
    )
    clip.add_argument(
        "--hard_negatives",
        action="store_true",
        help="Also contrast each image with a training caption one word (or one swap) away from its own.",
    )
    clip.add_argument(
        "--cell_swap_negatives",
        type=float,
        default=0.0,
        help="Share of each batch also shown with one or two patch-sized cells taken from another image, as hard "
        "negative images for the captions (default: 0).",
    )
    clip.add_argument(
        "--shape_swap_negatives",
        type=float,
        default=0.0,
        help="Shapes-world data only: share of each batch also shown with one object redrawn as another shape "
        "(a training caption's scene, never a held-out one), as hard negative images (default: 0).",
    )
    clip.add_argument("--license", default=None, help="License of the weights, for the model card.")
    parser.set_defaults(adam_beta2=0.98, adam_weight_decay=0.2, lr_scheduler="cosine")
    args = parser.parse_args(argv)
    check_common_arguments(args)
    for name in ("cell_swap_negatives", "shape_swap_negatives"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} is a share of the batch, in [0, 1]; got {getattr(args, name)}.")
    if args.hard_negatives and args.streaming:
        parser.error("--hard_negatives needs every caption up front to find their neighbours; drop --streaming.")
    return args


def caption_neighbors(captions: Iterable[str]) -> dict[str, list[str]]:
    """Each distinct caption -> the other distinct captions that differ from it in exactly one word, or by two of its
    words trading places: the hard negatives of --hard_negatives, taken from the data so that they are real captions
    (no caption held out of the data can appear as a negative)."""
    words = {caption: tuple(caption.split()) for caption in set(captions)}
    substitutions, swaps = defaultdict(list), defaultdict(list)
    for caption, w in words.items():
        for i in range(len(w)):
            substitutions[(i, w[:i] + w[i + 1 :])].append(caption)  # the caption with word i left out
        swaps[tuple(sorted(w))].append(caption)  # same words, maybe in another order
    neighbors = {caption: set() for caption in words}
    for group in substitutions.values():
        for caption in group:
            neighbors[caption].update(other for other in group if other != caption)
    for group in swaps.values():
        for caption in group:
            neighbors[caption].update(
                other for other in group if sum(a != b for a, b in zip(words[caption], words[other])) == 2
            )
    return {caption: sorted(others) for caption, others in neighbors.items()}


def contrastive_loss(
    logits_per_image: torch.Tensor,
    captions: list[str],
    texts: list[str],
    negative_image_captions: list[str | None] = (),
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy between the images and `texts`, the batch's captions followed by any hard
    negative captions (which only the images are scored against, as in NegCLIP). Rows of `logits_per_image` beyond
    `len(captions)` are hard negative images, which only the captions are scored against; `negative_image_captions`
    says what each of them shows (None: no caption), which is then not a wrong answer for that caption. Likewise a
    caption equal to an image's own caption is not counted as a wrong answer for it: CLIP's own loss
    (`return_loss=True`) counts it, and with few distinct captions (699 in the demo model's data) nearly every batch
    of 128 repeats some."""
    n = len(captions)
    same = torch.tensor([[text == caption for text in texts] for caption in captions], device=logits_per_image.device)
    same.fill_diagonal_(False)
    logits = logits_per_image.float()
    labels = torch.arange(n, device=logits.device)
    image_loss = F.cross_entropy(logits[:n].masked_fill(same, float("-inf")), labels)
    same_image = torch.zeros(n, len(logits), dtype=torch.bool, device=logits.device)  # [caption, image]
    same_image[:, :n] = same[:, :n]
    if negative_image_captions:
        same_image[:, n : n + len(negative_image_captions)] = torch.tensor(
            [[caption == shown for shown in negative_image_captions] for caption in captions], device=logits.device
        )
    text_loss = F.cross_entropy(logits[:, :n].t().masked_fill(same_image, float("-inf")), labels)
    return (image_loss + text_loss) / 2


def swap_cells(pixel_values: torch.Tensor, count: int, cell_size: int, generator: torch.Generator) -> torch.Tensor:
    """Hard negative images: copies of the first `count` images with one or two `cell_size` cells replaced by the
    same cells of the next image, picked where the two differ (weighted by the difference, so the change shows).
    These are the errors of an image-token generator, a few cells drawn wrong; clean drawings never show CLIP any."""
    images, partners = pixel_values[:count].clone(), pixel_values.roll(-1, 0)[:count]  # the last one's: the first
    grid = pixel_values.shape[-1] // cell_size
    difference = (images - partners).abs().mean(1).unfold(1, cell_size, cell_size).unfold(2, cell_size, cell_size)
    weights = difference.mean((-1, -2)).flatten(1).float() + 1e-6  # [count, grid * grid]
    num_cells = torch.randint(1, 3, (count,), generator=generator)
    for k in range(count):
        for cell in torch.multinomial(weights[k], int(num_cells[k]), generator=generator).tolist():
            rows = slice(cell // grid * cell_size, (cell // grid + 1) * cell_size)
            columns = slice(cell % grid * cell_size, (cell % grid + 1) * cell_size)
            images[k, :, rows, columns] = partners[k, :, rows, columns]
    return images


def build_clip_tokenizer(bpe: PreTrainedTokenizerFast, max_length: int) -> PreTrainedTokenizerFast:
    """A copy of `bpe` (normaliser, pre-tokeniser, vocabulary) that appends an end-of-text token to every text and
    pads with `bpe`'s pad token, so that CLIP can pool each caption at its end-of-text position."""
    backend = Tokenizer.from_str(bpe.backend_tokenizer.to_str())
    backend.add_special_tokens([EOS_TOKEN])
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, backend.token_to_id(EOS_TOKEN))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=bpe.pad_token,
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_processor(args, dataset) -> CLIPProcessor:
    if args.tokenizer_name_or_path is not None:
        bpe = load_component(DalleTokenizer, args.tokenizer_name_or_path, "tokenizer")
    else:
        captions = (batch["caption"] for batch in dataset.select_columns(["caption"]).iter(batch_size=1000))
        bpe = DalleTokenizer.train_from_texts(
            captions, vocab_size=args.vocab_size, max_text_length=args.max_text_length
        )
    size = args.resolution
    # The PIL backend: the same preprocessing whether or not torchvision is installed.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=build_clip_tokenizer(bpe, args.max_text_length))


def build_model(args, processor: CLIPProcessor) -> CLIPModel:
    tokenizer = processor.tokenizer
    overrides = parse_model_config(args.model_config)
    text_config = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.pad_token_id,  # no BOS: captions start with their first word
        "eos_token_id": tokenizer.eos_token_id,  # CLIP pools the text at this token
        **overrides.pop("text_config", {}),
    }
    vision_config = {
        "image_size": args.resolution,
        "patch_size": 8,
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        **overrides.pop("vision_config", {}),
    }
    return CLIPModel(
        CLIPConfig(text_config=text_config, vision_config=vision_config, **{"projection_dim": 128, **overrides})
    )


class ClipCollator:
    """`{"image", "caption"}` rows -> CLIP inputs, through the processor that will be saved (same preprocessing in
    training and at reranking time)."""

    def __init__(self, processor: CLIPProcessor, keep_images: bool = False):
        self.processor = processor
        self.keep_images = keep_images  # also return the RGB images themselves, under "images"

    def __call__(self, rows: list[dict]) -> dict:
        images = [to_rgb(row["image"]) for row in rows]
        batch = self.processor(
            images=images,
            text=[row["caption"] for row in rows],
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).data | {"captions": [row["caption"] for row in rows]}
        return batch | {"images": images} if self.keep_images else batch


def main(argv=None):
    args = parse_args(argv)
    training_config = TrainingConfig.from_args(args)
    accelerator = create_accelerator(training_config)
    dataset = load_image_caption_dataset(args)
    check_batch_size(dataset, args.train_batch_size, accelerator.num_processes)
    if args.shape_swap_negatives and not args.streaming:
        # Redrawing reads each caption's objects: refuse other captions now, not at the first step that meets one.
        for caption in set(dataset["caption"]):
            try:
                parse_caption(caption)
            except ValueError as error:
                raise ValueError(f"--shape_swap_negatives needs shapes-world captions: {error}") from error
    if args.pretrained_model_name_or_path is not None:
        model = load_component(CLIPModel, args.pretrained_model_name_or_path, "clip_model")
        processor = load_component(CLIPProcessor, args.pretrained_model_name_or_path, "clip_processor")
    else:
        processor = build_processor(args, dataset)
        model = build_model(args, processor)
    if accelerator.device.type == "cpu" and accelerator.mixed_precision in ("bf16", "fp16"):
        # PyTorch's CPU flash-attention kernel (SDPA's pick) is several times slower backward in half precision
        # than the eager matmul + softmax: 0.61 s instead of 1.1 s a step for the demo model's CLIP. Not saved with
        # the model, which reranks (forward only) with SDPA.
        model.set_attn_implementation("eager")
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    ema = create_ema(model, args.ema_decay) if args.use_ema else None

    collate = ClipCollator(processor, keep_images=args.shape_swap_negatives > 0)
    train_dataloader = make_dataloader(
        dataset, args.train_batch_size, collate, args.dataloader_num_workers, seed=args.seed
    )
    validation = collate(list(dataset.take(args.num_validation_pairs)))
    neighbors = {}
    if args.hard_negatives:
        neighbors = caption_neighbors(dataset["caption"])
        with_neighbors = sum(bool(others) for others in neighbors.values())
        logger.info("Hard negatives: %d of %d distinct captions have neighbours.", with_neighbors, len(neighbors))

    def loss_fn(model, batch, step):
        captions = batch["captions"]
        # Seeded by the step, so that a resumed run picks the same negatives.
        rng = random.Random(f"{args.seed}-{step}-{accelerator.process_index}")
        negatives = [rng.choice(neighbors[c]) for c in captions if neighbors.get(c)]
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if negatives:
            tokens = processor.tokenizer(negatives, padding="max_length", truncation=True, return_tensors="pt")
            input_ids = torch.cat([input_ids, tokens.input_ids.to(input_ids.device)])
            attention_mask = torch.cat([attention_mask, tokens.attention_mask.to(attention_mask.device)])
        pixel_values = batch["pixel_values"]
        num_swapped = round(args.cell_swap_negatives * len(captions))
        if num_swapped:
            generator = torch.Generator().manual_seed(rng.getrandbits(63))
            cell_size = accelerator.unwrap_model(model).config.vision_config.patch_size
            # On the CPU, where the seeded generator lives (a few cells per image: cheap).
            swapped = swap_cells(pixel_values.cpu(), num_swapped, cell_size, generator).to(pixel_values.device)
            pixel_values = torch.cat([pixel_values, swapped])
        negative_image_captions = [None] * num_swapped
        num_redrawn = round(args.shape_swap_negatives * len(captions))
        if num_redrawn:
            shape_rng = np.random.default_rng(rng.getrandbits(63))
            redrawn = [
                redraw_with_another_shape(image, caption, shape_rng)
                for image, caption in zip(batch["images"][:num_redrawn], captions)
            ]
            redrawn = [drawing for drawing in redrawn if drawing is not None]
            if redrawn:
                images, shown = zip(*redrawn)
                pixels = processor.image_processor(images=list(images), return_tensors="pt").pixel_values
                pixel_values = torch.cat([pixel_values, pixels.to(pixel_values)])
                negative_image_captions += shown
        output = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        loss = contrastive_loss(output.logits_per_image, captions, captions + negatives, negative_image_captions)
        return {"loss": loss, "logit_scale": accelerator.unwrap_model(model).logit_scale.detach().exp()}

    def validate(step: int, model: CLIPModel) -> dict[str, float] | None:
        if not accelerator.is_main_process or (step % args.validation_steps and step != args.max_train_steps):
            return None
        with averaged_weights(ema, model):  # judge what will be saved: the averaged weights
            return validation_accuracies(model, validation, neighbors, processor.tokenizer, accelerator)

    model, state, metrics = train(
        training_config, accelerator, model, train_dataloader, loss_fn, ema=ema, on_step_end=validate
    )

    if accelerator.is_main_process:

        def write(folder: Path) -> None:
            save_model(model, folder, ema)
            processor.save_pretrained(folder)

        write_folder_atomically(args.output_dir, write)
        write_card_and_push(
            args.output_dir,
            "clip_reranker",
            ModelCardData(license=args.license, tags=["dall-e", "hf_dalle", "clip", "zero-shot-image-classification"]),
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            hub_private=args.hub_private,
            commit_message="Add CLIP reranker trained with hf_dalle",
            model_name=Path(args.output_dir).resolve().name,
            training_summary=training_summary(args, "train_clip.py", argv, metrics, None),
            config=model.config,
            num_parameters=model.num_parameters(),
            num_validation_pairs=len(validation["captions"]),
        )
        logger.info("Saved CLIP to %s (%d steps).", args.output_dir, state.global_step)
    return state


@torch.no_grad()
def validation_accuracies(
    model: CLIPModel, batch: dict, neighbors: dict[str, list[str]], tokenizer, accelerator
) -> dict[str, float]:
    """`validation_image_to_text_accuracy`: the share of images whose best-scoring caption among the batch's captions
    is their own (an equal caption of another pair counts too). With `neighbors`, also
    `validation_hard_negative_accuracy`: the share of images (of captions that have neighbours) whose own caption
    outscores every neighbour."""
    model.eval()
    device = accelerator.device
    captions = batch["captions"]
    with accelerator.autocast():
        output = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            pixel_values=batch["pixel_values"].to(device),
        )
        best = output.logits_per_image.argmax(dim=1).tolist()
        own_best = sum(captions[j] == caption for caption, j in zip(captions, best))
        metrics = {"validation_image_to_text_accuracy": own_best / len(best)}
        judged = [i for i, caption in enumerate(captions) if neighbors.get(caption)]
        if judged:
            texts = sorted({text for i in judged for text in [captions[i], *neighbors[captions[i]]]})
            tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").to(device)
            text_embeds = F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1)
            image_embeds = F.normalize(output.image_embeds.float(), dim=-1)
            index = {text: k for k, text in enumerate(texts)}
            wins = 0
            for i in judged:
                scores = text_embeds @ image_embeds[i]
                own = scores[index[captions[i]]]
                wins += bool(all(own > scores[index[other]] for other in neighbors[captions[i]]))
            metrics["validation_hard_negative_accuracy"] = wins / len(judged)
    model.train()
    return metrics


if __name__ == "__main__":
    main()
