#!/usr/bin/env python
"""Train (or fine-tune) the DALL-E transformer prior (stage 2) on pre-tokenized pairs, with Accelerate; or fine-tune
a converted DALL·E Mini / Mega (scripts/convert_dalle_mega.py) the same way.

    python scripts/pretokenize.py --train_data_dir my_images --pretrained_model_name_or_path src/hf_dalle/demo_model \\
        --output_dir tokens
    accelerate launch scripts/train_dalle.py --pretrained_model_name_or_path src/hf_dalle/demo_model \\
        --pretokenized_dataset tokens --use_ema --max_train_steps 2000 --output_dir my-dalle

From scratch, name the tokenizer and dVAE (or let the pre-tokenized data's hf_dalle_pretokenized.json name them) and
the architecture with --model_config. The loss is the model's weighted cross-entropy (text 1/8, image 7/8 by
default; DALL·E Mini / Mega has the image loss only); --caption_dropout replaces a share of the captions by the
empty caption (as the pipeline encodes it for guidance), which teaches the unconditional stream that classifier-free
guidance needs. Every --validation_steps the prompts are sampled to an
image grid in OUTPUT_DIR/validation/. The output folder is a pipeline: transformer/ (with --use_ema the averaged
weights, raw weights beside them as the non_ema variant), tokenizer/, vae/ and, if given, clip_model/ +
clip_processor/, plus a model card; the base pipeline's default guidance scale (a converted Mega's 16) carries over.

With --lora_rank R (fine-tuning only) a peft LoRA adapter on the attention and MLP projections trains instead of all
weights, with the same resume / EMA / validation / Hub machinery; the output folder is then the adapter
(adapter_model.safetensors + adapter_config.json, with --use_ema the averaged adapter) plus the model card, loaded with
`DallePipeline.from_pretrained(BASE).load_lora_weights(OUTPUT_DIR)`.
"""

import argparse
import logging
from pathlib import Path

import torch
from huggingface_hub import ModelCardData
from transformers import AutoConfig, AutoTokenizer, CLIPModel, CLIPProcessor

from hf_dalle import (
    DalleBartForImageGeneration,
    DalleConfig,
    DalleForImageGeneration,
    DallePipeline,
    DalleTokenizer,
    DalleVAE,
    DalleVQGAN,
)
from hf_dalle.hub_utils import path_for_card, write_card_and_push
from hf_dalle.io_utils import write_folder_atomically
from hf_dalle.lora import add_lora_adapter, save_lora_adapter
from hf_dalle.models import TRANSFORMER_CLASSES
from hf_dalle.tokenization_dalle_bart import DalleBartTokenizer
from hf_dalle.training import (
    NON_EMA_VARIANT,
    RunFolder,
    TrainingConfig,
    add_common_arguments,
    averaged_weights,
    check_batch_size,
    check_common_arguments,
    create_accelerator,
    create_ema,
    load_component,
    load_image_tokenizer,
    load_pretokenized_dataset,
    make_dataloader,
    parse_model_config,
    save_image_grid,
    train,
    training_summary,
)
from hf_dalle.training.data import read_pretokenized_info
from hf_dalle.training.validation import shapes_judge_accuracy


logger = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, learning_rate=4.5e-4, train_batch_size=32, max_train_steps=10000)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--pretokenized_dataset", required=True, help="Output of scripts/pretokenize.py (folder or Hub id)."
    )
    data.add_argument("--streaming", action="store_true", help="Stream the pre-tokenized data.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first this many pairs.")
    parts = parser.add_argument_group(
        "pipeline parts (default: those of --pretrained_model_name_or_path, else those recorded by pretokenize.py)"
    )
    parts.add_argument(
        "--tokenizer_name_or_path", default=None, help="The caption tokenizer (DalleTokenizer or DalleBartTokenizer)."
    )
    parts.add_argument(
        "--vae_model_name_or_path",
        default=None,
        help="The image tokenizer (DalleVAE or DalleVQGAN) that made the image codes.",
    )
    parts.add_argument(
        "--clip_model_name_or_path",
        default=None,
        help="A CLIPModel + CLIPProcessor folder (train_clip.py) for reranking.",
    )
    stage = parser.add_argument_group("transformer training")
    stage.add_argument(
        "--caption_dropout",
        type=float,
        default=0.1,
        help="Share of captions replaced by the empty caption (for guidance).",
    )
    stage.add_argument(
        "--text_loss_weight", type=float, default=None, help="Override the config's text loss weight (1/8)."
    )
    stage.add_argument(
        "--validation_prompts",
        nargs="*",
        default=None,
        help="Prompts of the validation grid (default: 4 training captions).",
    )
    stage.add_argument("--num_validation_images", type=int, default=4, help="Images per validation prompt.")
    stage.add_argument("--validation_top_k", type=int, default=64, help="Top-k sampling of the validation images.")
    stage.add_argument(
        "--validation_guidance_scale",
        type=float,
        default=1.0,
        help="Classifier-free guidance of the validation images.",
    )
    stage.add_argument(
        "--shapes_judge",
        action="store_true",
        help="Also log the share of validation images that the shapes-world pixel judge accepts for their prompt.",
    )
    stage.add_argument("--license", default=None, help="License of the weights, for the model card.")
    lora = parser.add_argument_group("LoRA (fine-tune a low-rank adapter instead of all weights; needs peft)")
    lora.add_argument("--lora_rank", type=int, default=None, help="Rank of the LoRA adapter (default: no LoRA).")
    lora.add_argument("--lora_alpha", type=float, default=None, help="LoRA scale numerator (default: the rank).")
    lora.add_argument(
        "--lora_target_modules",
        nargs="+",
        default=None,
        help="Linear layers that get an adapter (default: the transformer's attention and feed-forward projections: "
        f"{' '.join(DalleForImageGeneration.lora_target_modules)} for DALL-E, "
        f"{' '.join(DalleBartForImageGeneration.lora_target_modules)} for DALL·E Mini / Mega).",
    )
    parser.set_defaults(adam_beta2=0.96, adam_weight_decay=4.5e-2, max_grad_norm=4.0)
    args = parser.parse_args(argv)
    check_common_arguments(args)
    if not 0.0 <= args.caption_dropout < 1.0:
        raise ValueError(f"--caption_dropout must be in [0, 1), got {args.caption_dropout}.")
    if args.lora_rank is not None and args.pretrained_model_name_or_path is None:
        raise ValueError("--lora_rank fine-tunes a trained pipeline: pass --pretrained_model_name_or_path.")
    return args


def load_parts(args) -> tuple[DalleTokenizer | DalleBartTokenizer, DalleVAE | DalleVQGAN, dict]:
    """The tokenizer and image tokenizer (dVAE or VQGAN) of the pipeline being trained, and the pre-tokenized data's info."""
    info = read_pretokenized_info(args.pretokenized_dataset)
    sources = {}
    for name, flag in (("tokenizer", args.tokenizer_name_or_path), ("vae", args.vae_model_name_or_path)):
        sources[name] = flag or args.pretrained_model_name_or_path or info.get(name)
        if sources[name] is None:
            raise ValueError(
                f"Which {name}? Pass --{name}{'_name_or_path' if name == 'tokenizer' else '_model_name_or_path'}, a "
                "pipeline with --pretrained_model_name_or_path, or data made by scripts/pretokenize.py."
            )
    tokenizer = load_component(AutoTokenizer, sources["tokenizer"], "tokenizer")
    vae = load_image_tokenizer(sources["vae"]).eval().requires_grad_(False)
    return tokenizer, vae, info


def build_transformer(
    args, tokenizer: DalleTokenizer | DalleBartTokenizer, vae: DalleVAE | DalleVQGAN, text_length: int, grid: int
) -> DalleForImageGeneration | DalleBartForImageGeneration:
    model_class = DalleForImageGeneration
    if args.pretrained_model_name_or_path is not None:
        config = load_component(AutoConfig, args.pretrained_model_name_or_path, "transformer")
        classes = {cls.config_class: cls for cls in TRANSFORMER_CLASSES}
        if type(config) not in classes:
            raise ValueError(
                f"The transformer of {args.pretrained_model_name_or_path!r} is a {config.model_type!r} model, not one "
                f"of {' or '.join(cls.__name__ for cls in TRANSFORMER_CLASSES)}."
            )
        model_class = classes[type(config)]
    else:
        config = DalleConfig(
            **{
                "text_vocab_size": len(tokenizer),
                "image_vocab_size": vae.config.vocab_size,
                "max_text_length": text_length,
                "image_grid_size": grid,
                "text_pad_token_id": tokenizer.pad_token_id,
                **parse_model_config(args.model_config),
            }
        )
    # Checked on the config, before a possibly large model is built.
    problems = []
    if (config.max_text_length, config.image_grid_size) != (text_length, grid):
        problems.append(
            f"the data has {text_length} caption positions and {grid}x{grid} codes, the transformer "
            f"{config.max_text_length} and {config.image_grid_size}x{config.image_grid_size}"
        )
    if config.image_vocab_size != vae.config.vocab_size:
        problems.append(f"the dVAE has {vae.config.vocab_size} codes, the transformer {config.image_vocab_size}")
    if len(tokenizer) > config.text_vocab_size or tokenizer.pad_token_id != config.text_pad_token_id:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens and pad id {tokenizer.pad_token_id}, the transformer "
            f"text_vocab_size {config.text_vocab_size} and text_pad_token_id {config.text_pad_token_id}"
        )
    if problems:
        raise ValueError(
            "The transformer does not fit its data: " + "; ".join(problems) + ". Pre-tokenize with the tokenizer and "
            "dVAE of the pipeline (scripts/pretokenize.py --pretrained_model_name_or_path ...)."
        )
    if args.text_loss_weight is not None:
        if not hasattr(config, "text_loss_weight"):
            raise ValueError(f"--text_loss_weight: a {model_class.__name__} has no text loss (it reads the caption).")
        config.text_loss_weight = args.text_loss_weight
    if args.pretrained_model_name_or_path is not None:
        # Trainable weights in float32 whatever the checkpoint's dtype (a converted ruDALL-E is float16, where AdamW's
        # updates overflow); --mixed_precision sets the compute dtype.
        return load_component(
            model_class, args.pretrained_model_name_or_path, "transformer", config=config, dtype=torch.float32
        )
    return DalleForImageGeneration(config)


def base_pipeline_settings(args) -> dict:
    """The sampling settings of the pipeline being fine-tuned (its `default_guidance_scale`, `clip_prompt_templates`),
    for the pipeline saved: a fine-tuned DALL·E Mega still samples with guidance 16 unless told otherwise."""
    if args.pretrained_model_name_or_path is None:
        return {}
    try:
        config = DallePipeline.load_config(args.pretrained_model_name_or_path)
    except (OSError, EnvironmentError):  # a transformer folder alone, not a pipeline
        return {}
    return {name: config[name] for name in ("default_guidance_scale", "clip_prompt_templates") if name in config}


def load_clip(args) -> tuple[CLIPModel | None, CLIPProcessor | None]:
    """The reranker to ship with the pipeline: --clip_model_name_or_path (a train_clip.py output or a pipeline), else
    the one of the pipeline being fine-tuned, if it has one."""
    source = args.clip_model_name_or_path
    if source is not None:
        return load_component(CLIPModel, source, "clip_model"), load_component(CLIPProcessor, source, "clip_processor")
    if args.pretrained_model_name_or_path is None:
        return None, None
    try:
        return (
            CLIPModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="clip_model"),
            CLIPProcessor.from_pretrained(args.pretrained_model_name_or_path, subfolder="clip_processor"),
        )
    except OSError:
        return None, None


def main(argv=None):
    args = parse_args(argv)
    training_config = TrainingConfig.from_args(args)
    accelerator = create_accelerator(training_config)
    dataset = load_pretokenized_dataset(
        args.pretokenized_dataset, streaming=args.streaming, max_samples=args.max_train_samples
    )
    check_batch_size(dataset, args.train_batch_size, accelerator.num_processes)
    tokenizer, vae, info = load_parts(args)
    first = next(iter(dataset))
    text_length, num_codes = first["text_input_ids"].numel(), first["image_codes"].numel()
    grid = int(round(num_codes**0.5))
    if grid * grid != num_codes:
        raise ValueError(f"The pre-tokenized image_codes hold {num_codes} codes per image, not a square grid.")

    model = build_transformer(args, tokenizer, vae, text_length, grid)
    if args.lora_rank is not None:
        add_lora_adapter(model, args.lora_rank, args.lora_alpha, args.lora_target_modules)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    ema = create_ema(model, args.ema_decay) if args.use_ema else None
    vae.to(accelerator.device)
    config = model.config

    prompts = args.validation_prompts
    if not prompts:
        rows = list(dataset.take(4))
        prompts = tokenizer.batch_decode([row["text_input_ids"] for row in rows], skip_special_tokens=True)

    train_dataloader = make_dataloader(
        dataset, args.train_batch_size, num_workers=args.dataloader_num_workers, seed=args.seed
    )

    # The model's own layout of a training example (DALL-E's stream, DALL·E Mega's caption + codes); it reads only the
    # config, so the unwrapped model's method serves whatever accelerate wraps the model in.
    prepare_training_inputs = model.prepare_training_inputs
    empty_caption = tokenizer.encode_captions([""], max_length=text_length)[0].to(accelerator.device)

    def loss_fn(model, batch, step):
        text = batch["text_input_ids"].long()
        if args.caption_dropout > 0:
            dropped = torch.rand(text.shape[0], device=text.device) < args.caption_dropout
            text = torch.where(dropped[:, None], empty_caption, text)
        output = model(**prepare_training_inputs(text, batch["image_codes"].long()), use_cache=False)
        losses = {"loss": output.loss}
        for name in ("text_loss", "image_loss"):  # DALL-E's parts of the loss
            if getattr(output, name, None) is not None:
                losses[name] = getattr(output, name)
        return losses

    before_optimizer_step = None
    if getattr(
        config, "resblock_gradient_scaling", False
    ):  # the paper's per-resblock fp16 gradient scaling (after the all-reduce)
        before_optimizer_step = lambda model: model.update_resblock_gradient_scales()  # noqa: E731

    clip_model, clip_processor = load_clip(args)
    pipeline_settings = base_pipeline_settings(args)
    if clip_model is not None:
        clip_model.to(accelerator.device).eval()
    grids = []

    def validate(step: int, model: DalleForImageGeneration | DalleBartForImageGeneration) -> dict[str, float] | None:
        if not accelerator.is_main_process or (step % args.validation_steps and step != args.max_train_steps):
            return None
        with averaged_weights(ema, model):  # sample from what will be saved: the averaged weights
            model.eval()
            pipeline = DallePipeline(tokenizer, model, vae, clip_model, clip_processor, **pipeline_settings)
            pipeline.set_progress_bar_config(disable=True)
            # Seeded generators: the same noise at every validation, and the training RNG is left alone (a resumed
            # run must draw what an uninterrupted one draws).
            generators = [
                torch.Generator(accelerator.device).manual_seed(args.seed + i)
                for i in range(len(prompts) * args.num_validation_images)
            ]
            with accelerator.autocast():
                images = pipeline(
                    prompts,
                    num_candidates=args.num_validation_images,
                    num_images_per_prompt=args.num_validation_images,
                    top_k=args.validation_top_k,
                    guidance_scale=args.validation_guidance_scale,
                    generator=generators,
                    output_type="pil",
                ).images
            model.train()
        grids.append(save_image_grid(images, len(prompts), RunFolder(args.output_dir).sample_grid(step)))
        if args.shapes_judge:
            captions = [prompt for prompt in prompts for _ in range(args.num_validation_images)]
            return {"validation_judge_accuracy": shapes_judge_accuracy(images, captions)}
        return None

    model, state, metrics = train(
        training_config,
        accelerator,
        model,
        train_dataloader,
        loss_fn,
        ema=ema,
        on_step_end=validate,
        before_optimizer_step=before_optimizer_step,
    )

    if accelerator.is_main_process:

        def write_pipeline(folder: Path) -> None:
            if args.lora_rank is not None:  # the adapter only
                with averaged_weights(ema, model):
                    save_lora_adapter(model, folder)
                return
            if ema is not None:  # the raw weights beside the averaged ones, which the pipeline samples with
                model.save_pretrained(folder / "transformer", variant=NON_EMA_VARIANT)
            with averaged_weights(ema, model):
                pipeline = DallePipeline(tokenizer, model, vae, clip_model, clip_processor, **pipeline_settings)
                pipeline.save_pretrained(folder)

        write_folder_atomically(args.output_dir, write_pipeline)
        summary = training_summary(
            args, "train_dalle.py", argv, metrics, grids[-1].relative_to(args.output_dir).as_posix() if grids else None
        )
        write_card_and_push(
            args.output_dir,
            "dalle_pipeline",
            ModelCardData(license=args.license, tags=["dall-e", "hf_dalle", "text-to-image"]),
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            hub_private=args.hub_private,
            commit_message="Add DALL-E pipeline trained with hf_dalle",
            model_name=Path(args.output_dir).resolve().name,
            training_summary=summary,
            config=config,
            num_parameters=model.num_parameters(),
            prompts=prompts,
            pretokenized_dataset=path_for_card(args.pretokenized_dataset),
            pretokenized_info={**info, **{k: path_for_card(info.get(k)) for k in ("vae", "tokenizer")}},
            base_model=path_for_card(args.pretrained_model_name_or_path),
            use_ema=args.use_ema,
            has_clip=clip_model is not None,
        )
        logger.info(
            "Saved the %s to %s (%d steps, %d skipped).",
            "LoRA adapter" if args.lora_rank is not None else "pipeline",
            args.output_dir,
            state.global_step,
            state.skipped_steps,
        )
    return state


if __name__ == "__main__":
    main()
