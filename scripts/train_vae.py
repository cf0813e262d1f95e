#!/usr/bin/env python
"""Train the DALL-E dVAE (stage 1) on images, with Accelerate (CPU, one GPU, DDP, FSDP).

    accelerate launch scripts/train_vae.py --train_data_dir my_images --resolution 64 \\
        --model_config '{"hidden_size": 64, "vocab_size": 512}' --max_train_steps 5000 --output_dir dalle-vae

The relaxed ELB of the paper: gumbel-softmax temperature annealed from --temperature_start to --temperature_end and
the KL weight raised from --kl_weight_start to --kl_weight_end, each over its own number of steps. Logs the
reconstruction loss, the KL term and codebook usage; every --validation_steps it writes a grid of fixed images above
their argmax-code reconstructions to OUTPUT_DIR/reconstructions/. The output folder is a `DalleVAE`
(`DalleVAE.from_pretrained(OUTPUT_DIR)`) with a model card.
"""

import argparse
import logging
from pathlib import Path

import torch
from huggingface_hub import ModelCardData

from hf_dalle import DalleVAE, DalleVAEConfig
from hf_dalle.hub_utils import write_card_and_push
from hf_dalle.io_utils import write_folder_atomically
from hf_dalle.models.dalle_vae.modeling_dalle_vae import RECONSTRUCTION_LOSSES
from hf_dalle.training import (
    ImageCaptionCollator,
    RunFolder,
    TrainingConfig,
    add_common_arguments,
    add_data_arguments,
    annealed_value,
    averaged_weights,
    check_batch_size,
    check_common_arguments,
    create_accelerator,
    create_ema,
    load_component,
    load_image_caption_dataset,
    make_dataloader,
    parse_model_config,
    save_image_grid,
    save_model,
    tensors_to_pil,
    train,
    training_summary,
)
from hf_dalle.training.schedules import SCHEDULE_KINDS
from hf_dalle.training.validation import shapes_judge_accuracy


logger = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, learning_rate=1e-3, train_batch_size=32, max_train_steps=10000)
    add_data_arguments(parser, resolution=64)
    vae = parser.add_argument_group("dVAE relaxation")
    vae.add_argument("--temperature_start", type=float, default=1.0, help="Gumbel-softmax temperature at step 0.")
    vae.add_argument(
        "--temperature_end", type=float, default=1 / 16, help="Temperature after the annealing (paper: 1/16)."
    )
    vae.add_argument(
        "--temperature_steps",
        type=int,
        default=None,
        help="Steps of the temperature annealing (default: --max_train_steps).",
    )
    vae.add_argument("--kl_weight_start", type=float, default=0.0, help="KL weight at step 0.")
    vae.add_argument("--kl_weight_end", type=float, default=6.6, help="KL weight after the ramp (paper: 6.6).")
    vae.add_argument(
        "--kl_weight_steps",
        type=int,
        default=None,
        help="Steps of the KL ramp (default: a tenth of --max_train_steps).",
    )
    vae.add_argument(
        "--schedule", default="cosine", choices=SCHEDULE_KINDS, help="Shape of both schedules (paper: cosine)."
    )
    vae.add_argument(
        "--straight_through", action="store_true", help="Hard one-hot codes with straight-through gradients."
    )
    vae.add_argument(
        "--reconstruction_loss",
        default="logit_laplace",
        choices=RECONSTRUCTION_LOSSES,
        help="The paper's logit-Laplace likelihood, or the mean squared error (learns flat-coloured images such as the "
        "shapes world much faster; use KL weights around 0.01 with it).",
    )
    vae.add_argument(
        "--code_usage_weight",
        type=float,
        default=0.0,
        help="Subtract this times the normalised entropy of the batch's average code distribution from the loss: "
        "rewards using many codes, against codebook collapse (default: 0, the paper's objective).",
    )
    vae.add_argument(
        "--num_validation_images",
        type=int,
        default=8,
        help="Images (the first of the data) reconstructed at each validation; the grid shows up to 16.",
    )
    vae.add_argument(
        "--shapes_judge",
        action="store_true",
        help="Also log the share of argmax reconstructions that the shapes-world pixel judge accepts (the captions "
        "must follow the shapes grammar); the dVAE bounds what the whole pipeline can draw.",
    )
    vae.add_argument("--license", default=None, help="License of the weights, for the model card.")
    parser.set_defaults(adam_beta2=0.999, adam_weight_decay=1e-4)
    args = parser.parse_args(argv)
    check_common_arguments(args)
    if args.temperature_steps is None:
        args.temperature_steps = args.max_train_steps
    if args.kl_weight_steps is None:
        args.kl_weight_steps = max(args.max_train_steps // 10, 1)
    if args.temperature_start <= 0 or args.temperature_end <= 0:
        raise ValueError("The gumbel-softmax temperatures must be positive.")
    return args


def build_vae(args) -> DalleVAE:
    if args.pretrained_model_name_or_path is not None:
        return load_component(DalleVAE, args.pretrained_model_name_or_path, "vae")
    config = DalleVAEConfig(**{"image_size": args.resolution, **parse_model_config(args.model_config)})
    return DalleVAE(config)


def main(argv=None):
    args = parse_args(argv)
    training_config = TrainingConfig.from_args(args)
    accelerator = create_accelerator(training_config)
    dataset = load_image_caption_dataset(args)
    check_batch_size(dataset, args.train_batch_size, accelerator.num_processes)
    vae = build_vae(args)
    if args.resolution % vae.config.downsample_factor:
        raise ValueError(f"--resolution must be a multiple of {vae.config.downsample_factor}, got {args.resolution}.")
    if args.gradient_checkpointing:
        vae.activation_checkpointing_enable()
    ema = create_ema(vae, args.ema_decay) if args.use_ema else None

    collate = ImageCaptionCollator(args.resolution)
    train_dataloader = make_dataloader(
        dataset, args.train_batch_size, collate, args.dataloader_num_workers, seed=args.seed
    )
    validation = collate(list(dataset.take(args.num_validation_images)))

    def loss_fn(model, batch, step):
        temperature = annealed_value(
            step, args.temperature_start, args.temperature_end, args.temperature_steps, args.schedule
        )
        kl_weight = annealed_value(step, args.kl_weight_start, args.kl_weight_end, args.kl_weight_steps, args.schedule)
        output = model(
            batch["pixel_values"],
            temperature=temperature,
            kl_weight=kl_weight,
            hard=args.straight_through,
            reconstruction_loss=args.reconstruction_loss,
        )
        return {
            "loss": output.loss - args.code_usage_weight * output.code_usage_entropy,
            "reconstruction_loss": output.reconstruction_loss,
            "kl_loss": output.kl_loss,
            "code_usage_entropy": output.code_usage_entropy,
            "perplexity": output.perplexity,
            "codes_used": output.codes_used,
            "temperature": temperature,
            "kl_weight": kl_weight,
        }

    grids = []

    def validate(step: int, model: DalleVAE) -> dict[str, float] | None:
        if not accelerator.is_main_process or (step % args.validation_steps and step != args.max_train_steps):
            return None
        with averaged_weights(ema, model):  # show what will be saved: the averaged weights
            model.eval()
            with torch.no_grad(), accelerator.autocast():
                pixels = validation["pixel_values"].to(accelerator.device)
                codes = model.encode(pixels).indices
                reconstructions = model.decode(codes).sample
            model.train()
        images = tensors_to_pil(reconstructions)
        shown = slice(0, 16)
        path = RunFolder(args.output_dir).sample_grid(step, "reconstructions")
        grids.append(save_image_grid(tensors_to_pil(pixels[shown]) + images[shown], 2, path))
        metrics = {
            "validation_codes_used": codes.unique().numel(),
            "validation_mse": torch.mean((reconstructions.float() - pixels) ** 2).item(),
        }
        if args.shapes_judge:
            metrics["validation_judge_accuracy"] = shapes_judge_accuracy(images, validation["captions"])
        return metrics

    vae, state, metrics = train(
        training_config, accelerator, vae, train_dataloader, loss_fn, ema=ema, on_step_end=validate
    )

    if accelerator.is_main_process:
        write_folder_atomically(args.output_dir, lambda folder: save_model(vae, folder, ema))
        sample_grid = grids[-1].relative_to(args.output_dir).as_posix() if grids else None
        summary = training_summary(args, "train_vae.py", argv, metrics, sample_grid)
        write_card_and_push(
            args.output_dir,
            "dalle_vae",
            ModelCardData(
                license=args.license, tags=["dall-e", "hf_dalle", "dvae", "discrete-vae", "image-tokenizer"]
            ),
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            hub_private=args.hub_private,
            commit_message="Add DALL-E dVAE trained with hf_dalle",
            model_name=Path(args.output_dir).resolve().name,
            model_description=summary,
            config=vae.config,
            encoder_parameters=sum(p.numel() for p in vae.encoder.parameters()),
            decoder_parameters=sum(p.numel() for p in vae.decoder.parameters()),
        )
        logger.info(
            "Saved the dVAE to %s (%d steps, %d skipped).", args.output_dir, state.global_step, state.skipped_steps
        )
    return state


if __name__ == "__main__":
    main()
