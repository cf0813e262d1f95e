"""DallePipeline: caption in, CLIP-reranked images out (DALL-E, Ramesh et al. 2021, section 2.5)."""

import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, PipelineQuantizationConfig
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging
from huggingface_hub import snapshot_download
from transformers import (
    ClassifierFreeGuidanceLogitsProcessor,
    CLIPModel,
    CLIPProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..lora import load_lora_adapter, remove_lora_adapters
from ..models.dalle import DalleForImageGeneration, DallePrefixCache
from ..models.dalle_vae import DalleVAE
from ..tokenization_dalle import DalleTokenizer


logger = logging.get_logger(__name__)


@dataclass
class DallePipelineOutput(BaseOutput):
    """
    Output of [`DallePipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            `num_images_per_prompt` images for each prompt, prompt after prompt, each prompt's best first.
            NumPy arrays are `(n, height, width, 3)` floats in [0, 1]; tensors are `(n, 3, height, width)`.
        scores (`list[float]` or `None`):
            The CLIP score (cosine similarity of the projected image and caption embeddings) of each returned image;
            `None` when the pipeline has no CLIP model (then the images are the first candidates, not reranked).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    scores: list[float] | None


class DallePipeline(DiffusionPipeline):
    r"""
    Text-to-image generation with DALL-E: sample `num_candidates` code grids per caption from the transformer prior,
    decode them with the dVAE, score each against its caption with CLIP and keep the best `num_images_per_prompt`.

    Args:
        tokenizer ([`DalleTokenizer`]): lowercasing BPE tokenizer of the captions.
        transformer ([`DalleForImageGeneration`]): the autoregressive prior over caption tokens and image codes.
        vae ([`DalleVAE`]): the discrete VAE that turns codes into pixels (and images into codes, for priming).
        clip_model ([`~transformers.CLIPModel`], *optional*): scores candidates against their caption.
        clip_processor ([`~transformers.CLIPProcessor`], *optional*): tokenizer + image processor for `clip_model`.
        default_guidance_scale (`float`, defaults to 1.0): the guidance scale of calls that do not name one, saved in
            `model_index.json`: a trained pipeline can ship the setting it was evaluated with (the demo model: 3).
    """

    model_cpu_offload_seq = "transformer->vae->clip_model"
    _optional_components = ["clip_model", "clip_processor"]

    def __init__(
        self,
        tokenizer: DalleTokenizer,
        transformer: DalleForImageGeneration,
        vae: DalleVAE,
        clip_model: CLIPModel | None = None,
        clip_processor: CLIPProcessor | None = None,
        default_guidance_scale: float = 1.0,
    ):
        super().__init__()
        expected = {
            "tokenizer": (tokenizer, DalleTokenizer),
            "transformer": (transformer, DalleForImageGeneration),
            "vae": (vae, DalleVAE),
            "clip_model": (clip_model, (CLIPModel, type(None))),
            "clip_processor": (clip_processor, (CLIPProcessor, type(None))),
        }
        for name, (component, cls) in expected.items():
            if not isinstance(component, cls):
                names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
                raise ValueError(f"`{name}` must be a {names}, got {type(component).__name__}.")
        if (clip_model is None) != (clip_processor is None):
            raise ValueError("`clip_model` and `clip_processor` go together: pass both or neither.")
        config = transformer.config
        if vae.config.vocab_size != config.image_vocab_size:
            raise ValueError(
                f"The dVAE has {vae.config.vocab_size} codes but the transformer draws from "
                f"image_vocab_size={config.image_vocab_size}."
            )
        if not isinstance(default_guidance_scale, (int, float)) or not default_guidance_scale >= 1:
            raise ValueError(
                f"`default_guidance_scale` must be a number >= 1 (1 = no guidance), got {default_guidance_scale!r}."
            )
        self.register_modules(
            tokenizer=tokenizer, transformer=transformer, vae=vae, clip_model=clip_model, clip_processor=clip_processor
        )
        self.register_to_config(default_guidance_scale=float(default_guidance_scale))
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "DallePipeline":
        """
        Load from a local pipeline directory or a Hub repo id (downloaded with `snapshot_download`, which honours
        `revision`, `cache_dir`, `token`, `force_download`, `local_files_only` and `HF_HUB_OFFLINE`).

        The transformer holds nearly all the weights, so these go to its `from_pretrained` (the dVAE and CLIP load
        whole, as usual):

        - `device_map="auto"` or a dict over the transformer's modules (`{"model.layers.3": "disk", ...}`), with
          `max_memory` and `offload_folder`: accelerate big-model inference. Blocks that do not fit stay on disk (or
          on the CPU) and are brought in one at a time during each forward pass. diffusers' own pipeline-level
          strategies (`"balanced"`, a device name) are passed on to diffusers unchanged.
        - `quantization_config`: a transformers quantization config, e.g.
          `TorchAoConfig(Int8WeightOnlyConfig())` (CPU or GPU) or `BitsAndBytesConfig(load_in_8bit=True)` (GPU).
          A diffusers `PipelineQuantizationConfig` is passed on to diffusers unchanged.
        """
        if not os.path.isdir(pretrained_model_name_or_path):
            # diffusers refuses, before downloading, repos whose `model_index.json` names components from libraries
            # other than diffusers/transformers (ours are `hf_dalle` classes), but loads such a folder from disk.
            download_keys = ("revision", "cache_dir", "token", "force_download", "local_files_only")
            download_kwargs = {key: kwargs.pop(key) for key in download_keys if key in kwargs}
            pretrained_model_name_or_path = snapshot_download(str(pretrained_model_name_or_path), **download_kwargs)
        device_map = kwargs.get("device_map")
        quantization_config = kwargs.get("quantization_config")
        per_module_map = device_map == "auto" or isinstance(device_map, dict)
        transformers_quantization = quantization_config is not None and not isinstance(
            quantization_config, PipelineQuantizationConfig
        )
        if "transformer" not in kwargs and (per_module_map or transformers_quantization):
            transformer_keys = ["max_memory", "offload_folder"] if per_module_map else []
            transformer_keys += ["device_map"] if per_module_map else []
            transformer_keys += ["quantization_config"] if transformers_quantization else []
            transformer_kwargs = {key: kwargs.pop(key) for key in transformer_keys if key in kwargs}
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            if dtype is not None:
                transformer_kwargs["dtype"] = dtype
            kwargs["transformer"] = DalleForImageGeneration.from_pretrained(
                pretrained_model_name_or_path, subfolder="transformer", **transformer_kwargs
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def load_lora_weights(
        self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str = "default", **kwargs
    ) -> None:
        """
        Load a LoRA adapter of the transformer (`adapter_config.json` + `adapter_model.safetensors`, as written by
        `scripts/train_dalle.py --lora_rank R` or `hf_dalle.lora.save_lora_adapter`) from a directory or a
        Hub repo id, and activate it (needs `peft`); `kwargs` (`revision`, `token`, ...) go to the Hub download.
        [`unload_lora_weights`] restores the base model.
        """
        load_lora_adapter(self.transformer, pretrained_model_name_or_path, adapter_name=adapter_name, **kwargs)

    def unload_lora_weights(self) -> None:
        """Remove every LoRA adapter from the transformer: it computes exactly its base weights' outputs again."""
        remove_lora_adapters(self.transformer)

    @property
    def image_size(self) -> int:
        """Side of the generated images: the code grid times the dVAE's downsampling factor."""
        return self.transformer.config.image_grid_size * self.vae.config.downsample_factor

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_candidates,
        num_images_per_prompt,
        temperature,
        top_k,
        top_p,
        guidance_scale,
        generator,
        image,
        num_prime_rows,
        candidate_batch_size,
        output_type,
    ):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"`prompt` must be a non-empty string or a non-empty list of them, got {prompt!r}.")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if (
                not isinstance(negatives, list)
                or len(negatives) != len(prompts)
                or not all(isinstance(n, str) for n in negatives)
            ):
                raise ValueError(
                    f"`negative_prompt` must be a string or a list of {len(prompts)} strings (one per prompt), "
                    f"got {negative_prompt!r}."
                )
        if not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"`num_candidates` must be a positive integer, got {num_candidates!r}.")
        if not isinstance(num_images_per_prompt, int) or not 1 <= num_images_per_prompt <= num_candidates:
            raise ValueError(
                f"`num_images_per_prompt` must be between 1 and num_candidates={num_candidates}, "
                f"got {num_images_per_prompt!r}."
            )
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"`top_k` must be a non-negative integer (0 = off), got {top_k!r}.")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
        if not guidance_scale >= 1:
            raise ValueError(f"`guidance_scale` must be >= 1 (1 = no guidance), got {guidance_scale}.")
        if isinstance(generator, list) and len(generator) != len(prompts) * num_candidates:
            raise ValueError(
                f"A list of generators needs one per candidate: {len(prompts)} prompts x {num_candidates} candidates "
                f"= {len(prompts) * num_candidates}, got {len(generator)}."
            )
        grid = self.transformer.config.image_grid_size
        if num_prime_rows and image is None:
            raise ValueError("`num_prime_rows` needs an `image` to take the rows from.")
        if image is not None and not 0 < num_prime_rows < grid:
            raise ValueError(
                f"`num_prime_rows` must be between 1 and {grid - 1} when priming with an image, got {num_prime_rows}."
            )
        if not isinstance(candidate_batch_size, int) or candidate_batch_size < 1:
            raise ValueError(f"`candidate_batch_size` must be a positive integer, got {candidate_batch_size!r}.")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str] | None, do_guidance: bool):
        """The text part of the streams: caption ids `[P, max_text_length]`, and for guidance the unconditional
        (negative prompt, or empty = all pads) ids of the same shape, else `None`."""
        max_length = self.transformer.config.max_text_length
        # As diffusers' pipelines do for CLIP's 77 tokens: say what was cut, since the image will not show it.
        for prompt in prompts:
            tokens = self.tokenizer.tokenize(prompt)
            if len(tokens) > max_length:
                cut = self.tokenizer.convert_tokens_to_string(tokens[max_length:]).strip()
                logger.warning(
                    f"This prompt is {len(tokens)} tokens long but the model reads {max_length}; it is truncated and "
                    f"{cut!r} is ignored: {prompt!r}"
                )
        text_ids = self.tokenizer.encode_captions(prompts, max_length=max_length)
        if not do_guidance:
            return text_ids, None
        uncond_ids = self.tokenizer.encode_captions(negative_prompts or [""] * len(prompts), max_length=max_length)
        return text_ids, uncond_ids

    def prepare_prime_codes(self, image, num_prime_rows: int, num_prompts: int) -> torch.LongTensor | None:
        """The first `num_prime_rows` rows of dVAE codes of `image` (one image, or one per prompt), `[P, rows * G]`."""
        if image is None:
            return None
        images = image if isinstance(image, list) else [image]
        if len(images) not in (1, num_prompts):
            raise ValueError(f"Pass one priming `image` or one per prompt ({num_prompts}), got {len(images)}.")
        pixels = torch.stack([self._image_to_pixels(i) for i in images])
        if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"The priming image must be {self.image_size}x{self.image_size} (the size the pipeline generates), "
                f"got {pixels.shape[-1]}x{pixels.shape[-2]}."
            )
        codes = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).indices
        grid = self.transformer.config.image_grid_size
        codes = codes[:, :num_prime_rows].reshape(codes.shape[0], num_prime_rows * grid)
        return codes.expand(num_prompts, -1) if codes.shape[0] == 1 else codes

    @staticmethod
    def _image_to_pixels(image) -> torch.Tensor:
        """A PIL image, an `(H, W, 3)` array (uint8, or floats in [0, 1]) or a `(3, H, W)` tensor in [0, 1] as a
        `(3, H, W)` float tensor."""
        if isinstance(image, PIL.Image.Image):
            return VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(image.convert("RGB")))[0]
        if isinstance(image, np.ndarray):
            array = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
            return torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)
        if torch.is_tensor(image):
            return image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        raise ValueError(f"`image` must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")

    @staticmethod
    def draw_uniforms(generator, num_rows: int, num_steps: int) -> torch.Tensor:
        """One uniform number per sampling step for each candidate, `[num_rows, num_steps]`, drawn from the
        candidate's own generator (or one shared generator, row after row), so a candidate's draws never depend on
        how the candidates are batched."""
        generators = generator if isinstance(generator, list) else [generator] * num_rows
        return torch.stack(
            [torch.rand(num_steps, generator=g, device=g.device if g is not None else "cpu").cpu() for g in generators]
        )

    @torch.no_grad()
    def sample_codes(
        self,
        streams: torch.LongTensor,
        uncond_streams: torch.LongTensor | None,
        uniforms: torch.Tensor,
        logits_processor: LogitsProcessorList,
        progress_bar,
    ) -> torch.LongTensor:
        """
        Continue `streams` (`[B, T + primed codes]`) to full code grids, `[B, G * G]` image codes.

        Hand-written decode loop rather than `generate()`: each row samples with its own random numbers (`uniforms`),
        which `generate` cannot do. Sampling is by inverse CDF: the code whose cumulative probability first exceeds
        the row's uniform number, so one number per step and row decides the draw.
        """
        config = self.transformer.config
        batch = torch.cat([streams, uncond_streams]) if uncond_streams is not None else streams
        num_new = config.max_sequence_length - streams.shape[1]
        cache = DallePrefixCache(config)
        logits = self.transformer(batch, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        generated = streams
        for step in range(num_new):
            # Only image codes can come next: sample over the image vocabulary.
            scores = logits_processor(generated, logits[:, config.text_vocab_size :].float())
            cdf = scores.softmax(dim=-1).cumsum(dim=-1)
            threshold = uniforms[:, step : step + 1].to(cdf) * cdf[:, -1:]
            codes = torch.searchsorted(cdf, threshold).clamp_(max=config.image_vocab_size - 1)
            next_ids = codes + config.text_vocab_size
            generated = torch.cat([generated, next_ids], dim=1)
            progress_bar.update()
            if step + 1 < num_new:
                step_ids = torch.cat([next_ids, next_ids]) if uncond_streams is not None else next_ids
                logits = self.transformer(step_ids, past_key_values=cache, use_cache=True).logits[:, -1]
        return generated[:, config.max_text_length :] - config.text_vocab_size

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """Image codes `[B, G * G]` -> images `[B, 3, H, W]` in [0, 1]."""
        grid = self.transformer.config.image_grid_size
        return self.vae.decode(codes.view(-1, grid, grid).to(self.vae.device)).sample

    @staticmethod
    def rerank(
        kept: tuple[torch.Tensor, torch.Tensor] | None,
        images: torch.Tensor,
        scores: torch.Tensor,
        keep: int,
        by_score: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge new candidates `(images, scores)` into a prompt's `kept` ones and keep the best `keep`: by CLIP score
        (ties in sampling order), or the first ones when `by_score` is False."""
        if kept is not None:
            images, scores = torch.cat([kept[0], images]), torch.cat([kept[1], scores])
        order = torch.sort(scores, descending=True, stable=True).indices if by_score else torch.arange(len(scores))
        return images[order[:keep]], scores[order[:keep]]

    @torch.no_grad()
    def clip_scores(self, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP score of each image `[B, 3, H, W]` against its caption embedding `[B, D]` (normalised)."""
        pixels = self.clip_processor.image_processor(
            images=list(images.float().cpu()), do_rescale=False, return_tensors="pt"
        ).pixel_values
        image_embeds = self.clip_model.get_image_features(pixel_values=pixels.to(self.clip_model.device))
        image_embeds = getattr(image_embeds, "pooler_output", image_embeds)
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        return (image_embeds * text_embeds).sum(dim=-1).float()

    @torch.no_grad()
    def clip_text_embeds(self, prompts: list[str]) -> torch.Tensor:
        inputs = self.clip_processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        text_embeds = self.clip_model.get_text_features(**inputs.to(self.clip_model.device))
        text_embeds = getattr(text_embeds, "pooler_output", text_embeds)
        return text_embeds / text_embeds.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_candidates: int = 16,
        num_images_per_prompt: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        num_prime_rows: int = 0,
        candidate_batch_size: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> DallePipelineOutput | tuple:
        r"""
        Generate images for `prompt`.

        Args:
            prompt (`str` or `list[str]`): the caption(s); lowercased and truncated to the model's text length.
            negative_prompt (`str` or `list[str]`, *optional*): with `guidance_scale > 1`, the caption to steer away
                from (default: the empty caption).
            num_candidates (`int`, defaults to 16): images sampled per prompt before reranking (the paper uses 512).
            num_images_per_prompt (`int`, defaults to 1): how many of the best candidates to return per prompt.
            temperature (`float`, defaults to 1.0): softmax temperature of the code distribution.
            top_k (`int`, *optional*): sample among the `top_k` most likely codes only (0 or `None` = all).
            top_p (`float`, *optional*): nucleus sampling, the smallest set of codes with probability >= `top_p`.
            guidance_scale (`float`, *optional*): classifier-free guidance; the logits become
                `uncond + guidance_scale * (cond - uncond)`. 1 disables it (and its extra forward rows). Defaults to
                the pipeline's `default_guidance_scale` (`pipe.config.default_guidance_scale`, 1 unless the pipeline
                ships another).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one generator for everything, or one
                per candidate (`len(prompt) * num_candidates`, prompt after prompt); a candidate drawn from its own
                generator is the same whatever the batch size, candidate count or chunking.
            image (PIL image, array or tensor in [0, 1], *optional*): prime generation with the top `num_prime_rows`
                rows of this image's codes (zero-shot image-to-image); one image for all prompts or one per prompt,
                of the generated size.
            num_prime_rows (`int`, defaults to 0): rows of codes to keep from `image`.
            candidate_batch_size (`int`, defaults to 16): candidates sampled together; bounds memory for large
                `num_candidates`.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): return a [`DallePipelineOutput`] instead of a tuple.

        Returns:
            [`DallePipelineOutput`] (or `(images, scores)`): each prompt's `num_images_per_prompt` best images, best
            first, and their CLIP scores (`None` without a CLIP model).
        """
        # 1. Check inputs
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        self.check_inputs(
            prompt, negative_prompt, num_candidates, num_images_per_prompt, temperature, top_k, top_p,
            guidance_scale, generator, image, num_prime_rows, candidate_batch_size, output_type,
        )  # fmt: skip
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        do_guidance = guidance_scale > 1
        rerank = self.clip_model is not None
        if not rerank and num_candidates > num_images_per_prompt:
            logger.warning("No CLIP model in this pipeline: returning the first candidates without reranking.")
        device = self._execution_device

        # 2. Encode the prompts (and the unconditional captions for guidance), prime with image rows
        text_ids, uncond_ids = self.encode_prompt(prompts, negatives, do_guidance)
        prime_codes = self.prepare_prime_codes(image, num_prime_rows, len(prompts))
        streams = self.transformer.prepare_input_ids(text_ids, prime_codes).to(device)
        uncond_streams = (
            self.transformer.prepare_input_ids(uncond_ids, prime_codes).to(device) if do_guidance else None
        )

        processors = LogitsProcessorList()
        if do_guidance:
            processors.append(ClassifierFreeGuidanceLogitsProcessor(guidance_scale))
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))

        # 3. Sample candidates in chunks, decode, score, keep each prompt's best
        num_rows = len(prompts) * num_candidates
        num_new = self.transformer.config.max_sequence_length - streams.shape[1]
        uniforms = self.draw_uniforms(generator, num_rows, num_new)
        text_embeds = self.clip_text_embeds(prompts) if rerank else None
        kept = [None] * len(prompts)  # each prompt's best (images, scores) so far
        chunks = [range(s, min(s + candidate_batch_size, num_rows)) for s in range(0, num_rows, candidate_batch_size)]
        with self.progress_bar(total=len(chunks) * num_new) as progress_bar:
            for rows in chunks:
                prompt_index = torch.tensor([r // num_candidates for r in rows])
                codes = self.sample_codes(
                    streams[prompt_index],
                    uncond_streams[prompt_index] if do_guidance else None,
                    uniforms[rows.start : rows.stop],
                    processors,
                    progress_bar,
                )
                images = self.decode(codes).float().cpu()
                scores = (
                    self.clip_scores(images, text_embeds[prompt_index]).cpu() if rerank else torch.zeros(len(rows))
                )
                # 4. Rerank: keep each prompt's best candidates so far, so memory stays bounded for large N
                for p in prompt_index.unique().tolist():
                    mine = prompt_index == p
                    kept[p] = self.rerank(kept[p], images[mine], scores[mine], num_images_per_prompt, by_score=rerank)

        # 5. Post-process
        images = torch.cat([images for images, _ in kept])
        scores = torch.cat([scores for _, scores in kept]).tolist() if rerank else None
        if output_type == "pt":
            output_images = images
        else:
            output_images = self.image_processor.pt_to_numpy(images)
            if output_type == "pil":
                output_images = self.image_processor.numpy_to_pil(output_images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return output_images, scores
        return DallePipelineOutput(images=output_images, scores=scores)


__all__ = ["DallePipeline", "DallePipelineOutput"]
