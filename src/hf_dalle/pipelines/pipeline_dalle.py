"""DallePipeline: caption in, CLIP-reranked images out (DALL-E, Ramesh et al. 2021, section 2.5)."""

import functools
import inspect
import json
import numbers
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, PipelineQuantizationConfig
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import is_compiled_module
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import (
    CLIPModel,
    CLIPProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    PretrainedConfig,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache

from ..device_utils import slow_half_precision_warning
from ..hub_utils import hub_repo_id
from ..image_utils import to_rgb
from ..loading_utils import load_complete_model
from ..lora import load_lora_adapter, remove_lora_adapters
from ..models import IMAGE_TOKENIZER_CLASSES, TRANSFORMER_CLASSES
from ..models.dalle import DalleForImageGeneration
from ..models.dalle_bart import DalleBartForImageGeneration
from ..models.dalle_vae import DalleVAE
from ..models.dalle_vqgan import DalleVQGAN
from ..tokenization_dalle import DalleTokenizer
from ..tokenization_dalle_bart import DalleBartTokenizer


logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> import hf_dalle
        >>> from hf_dalle import DallePipeline

        >>> pipe = DallePipeline.from_pretrained(hf_dalle.DEMO_MODEL_DIR)  # the small shapes-world model it ships
        >>> generator = torch.Generator().manual_seed(0)
        >>> output = pipe("a red circle above a blue square", num_candidates=4, generator=generator)
        >>> output.images[0].save("red_circle_above_blue_square.png")
        ```
"""


# What `snapshot_download` takes from `from_pretrained` / `load_lora_weights` keyword arguments.
DOWNLOAD_KWARGS = ("revision", "cache_dir", "token", "force_download", "local_files_only")
# The caption tokenizer of each transformer family: DALL-E's (and a converted ruDALL-E's), DALL·E Mini / Mega's.
CAPTION_TOKENIZER_CLASSES = (DalleTokenizer, DalleBartTokenizer)


def _pipeline_components(model_index: dict) -> list[str]:
    """The components a `model_index.json` names (`"vae": ["hf_dalle", "DalleVAE"]`), without the absent optional
    ones (`[null, null]`) and the settings (`"default_guidance_scale": 3.0`)."""
    return [
        name
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
    ]


def _is_real(value) -> bool:
    """A real number (int, float, NumPy scalar), not a bool, a string or None."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_bool_mask(value, name: str) -> torch.BoolTensor:
    """`value` (a tensor, array or nested lists of booleans, or of the integers 0 and 1) as a boolean tensor. Anything
    else raises, naming `name`: a float mask has no one reading (0.5? NaN?), and a string is not a mask at all."""
    try:
        mask = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, objects
        mask = None
    if mask is None or mask.is_floating_point() or mask.is_complex():
        kind = type(value).__name__ if mask is None else f"{type(value).__name__} of {mask.dtype}"
        raise ValueError(f"`{name}` must hold booleans (or the integers 0 and 1), got a {kind}.")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"`{name}` must hold booleans (or the integers 0 and 1), got other integers.")
        mask = mask.bool()
    return mask


def _transformer_class(folder: str | os.PathLike) -> type:
    """The model class of a pipeline folder's `transformer/`, from the `model_type` of its config."""
    config, _ = PretrainedConfig.get_config_dict(folder, subfolder="transformer")
    classes = {cls.config_class.model_type: cls for cls in TRANSFORMER_CLASSES}
    if config.get("model_type") not in classes:
        raise ValueError(
            f"The transformer of {os.fspath(folder)!r} is a {config.get('model_type')!r} model; a DallePipeline takes "
            f"{' or '.join(repr(t) for t in classes)}."
        )
    return classes[config["model_type"]]


def _caption_rows(captions: dict[str, torch.Tensor], index: torch.LongTensor | slice) -> dict[str, torch.Tensor]:
    """The rows `index` of captions as the transformer's `encode_captions` gives them (a dict of tensors, a row per
    caption)."""
    return {name: tensor[index] for name, tensor in captions.items()}


def _read_model_index(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            model_index = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid model_index.json: {error}.") from None
    if not isinstance(model_index, dict):
        raise ValueError(f"{path} is not a valid model_index.json: expected a JSON object.")
    return model_index


def _shorten(text: str, length: int) -> str:
    """`text` cut to `length` characters, with an ellipsis where it was cut."""
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


@functools.cache
def _warn_once(message: str | None) -> None:
    if message is not None:
        logger.warning(message)


@dataclass
class DallePipelineOutput(BaseOutput):
    """
    Output of [`DallePipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            `num_images_per_prompt` images for each prompt, prompt after prompt, each prompt's best first.
            NumPy arrays are `(n, height, width, 3)` floats in [0, 1]; tensors are `(n, 3, height, width)`; with
            `output_type="latent"`, the image codes, `(n, grid, grid)` integers (`pipe.vae.decode` draws them).
        scores (`list[float]` or `None`):
            The CLIP score (cosine similarity of the projected image and caption embeddings) of each returned image,
            or its perplexity with `rerank="perplexity"`; `None` when the candidates were not reranked (no CLIP model
            and no `rerank`: then the images are the first candidates).
        candidate_indices (`list[int]`, *optional*):
            Which candidate of its prompt each image is: `i` was drawn from the prompt's `i`-th generator.
        prompt_warnings (`list[str | None]`, *optional*):
            One per prompt: what the model did not read of it, in a sentence (words its tokenizer does not know, text
            cut at the model's text length), or `None` when it read the whole caption.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    scores: list[float] | None
    candidate_indices: list[int] | None = None
    prompt_warnings: list[str | None] | None = None


@dataclass
class DallePipelineProgress:
    """
    What [`DallePipeline.generate_progressively`] yields: after each decode step, the codes so far of the chunk of
    candidates being sampled; after each chunk, how many of all the prompts' candidates are sampled and scored; last,
    with `output` set, what the pipeline call returns.

    Args:
        num_sampled (`int`): candidates sampled and scored so far, all prompts together.
        num_candidates (`int`): candidates of the whole call.
        output ([`DallePipelineOutput`] or `tuple`, *optional*): the call's result, in the last progress only.
        codes (`torch.LongTensor`, *optional*): after a decode step, the codes so far of the chunk being sampled,
            `[B, n]` in raster order (primed codes included); [`DallePipeline.decode_partial`] draws them as
            previews. `None` after a chunk and in the last progress.
        prompt_index, candidate_index (`torch.LongTensor`, *optional*): with `codes`, the prompt of each row and
            which of its prompt's candidates it is, `[B]`.
    """

    num_sampled: int
    num_candidates: int
    output: DallePipelineOutput | tuple | None = None
    codes: torch.LongTensor | None = None
    prompt_index: torch.LongTensor | None = None
    candidate_index: torch.LongTensor | None = None


class FixedImageCodesLogitsProcessor(LogitsProcessor):
    """
    Image prompts at any grid positions (ruDALL-E's `ImagePrompts`, e.g. its borders): where `mask` (`[B, G * G]`,
    raster order) is set, only the prompt's code (`codes`, `[B, G * G]`) can be drawn next. Works on the image-vocabulary
    scores of [`DallePipeline.sample_codes`] (`input_ids`: the image codes so far).
    """

    def __init__(self, codes: torch.LongTensor, mask: torch.BoolTensor):
        self.codes, self.mask = codes, mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        index = input_ids.shape[1]  # raster index of the code drawn next
        forced = self.mask[:, index].to(scores.device)
        only_prompt_code = torch.full_like(scores, -float("inf"))
        only_prompt_code.scatter_(1, self.codes[:, index : index + 1].to(scores.device), 0.0)
        return torch.where(forced[:, None], only_prompt_code, scores)


class BestCandidates:
    """
    Each prompt's best `keep` candidates so far, merged chunk after chunk so that memory stays bounded for any number of
    candidates (the pipeline's, and through it the web app's and `scripts/generate.py`'s). It holds, on the CPU, prompt
    after prompt and each prompt's best first, their `prompt_index`, `candidate_index` (within the prompt), image
    `codes` (`[n, num_codes]`) and `scores`.

    `descending=True` ranks by score, highest first (CLIP); `False`, lowest first (perplexity); ties stay in sampling
    order. `descending=None` keeps the first candidates in sampling order, without scores.
    """

    def __init__(self, keep: int, descending: bool | None, num_codes: int):
        self.keep, self.descending = keep, descending
        self.prompt_index = torch.zeros(0, dtype=torch.long)
        self.candidate_index = torch.zeros(0, dtype=torch.long)
        self.codes = torch.zeros(0, num_codes, dtype=torch.long)
        self.scores = torch.zeros(0) if descending is not None else None

    def add(
        self,
        prompt_index: torch.LongTensor,
        candidate_index: torch.LongTensor,
        codes: torch.LongTensor,
        scores: torch.Tensor | None = None,
    ) -> None:
        """Merge a chunk of candidates (`[B]` prompt and candidate indices, `[B, num_codes]` codes, `[B]` scores unless
        `descending` is None; candidates of several prompts, in sampling order) into the kept ones."""
        prompt_index = torch.cat([self.prompt_index, prompt_index.cpu()])
        candidate_index = torch.cat([self.candidate_index, candidate_index.cpu()])
        codes = torch.cat([self.codes, codes.cpu()])
        # The kept candidates come first and were sampled first: stable sorts keep ties in sampling order.
        order = torch.arange(len(codes))
        if self.descending is not None:
            scores = torch.cat([self.scores, scores.cpu()])
            order = torch.sort(scores, descending=self.descending, stable=True).indices
        order = order[torch.sort(prompt_index[order], stable=True).indices]  # prompt after prompt, best first
        grouped = prompt_index[order]
        rank_in_prompt = torch.arange(len(order)) - torch.searchsorted(grouped, grouped)
        kept = order[rank_in_prompt < self.keep]
        self.prompt_index, self.candidate_index, self.codes = prompt_index[kept], candidate_index[kept], codes[kept]
        if self.descending is not None:
            self.scores = scores[kept]


class DallePipeline(DiffusionPipeline):
    r"""
    Text-to-image generation with DALL-E: sample `num_candidates` code grids per caption from the transformer prior,
    decode them with the dVAE, score each against its caption with CLIP and keep the best `num_images_per_prompt`.

    The transformer is DALL-E's decoder-only prior ([`DalleForImageGeneration`], also ruDALL-E's) or DALL·E Mini /
    Mega's encoder-decoder ([`DalleBartForImageGeneration`], with a [`DalleBartTokenizer`] and a VQGAN). One loop
    samples both: everything that differs between them sits behind the methods both models have (`encode_captions`,
    run once per prompt; `make_cache`; `image_code_logits`, which starts a chunk of candidates from their captions
    and primed codes, or scores whole grids; `next_image_code_logits`, one decode step), which give logits over the
    image codes only.

    Args:
        tokenizer ([`DalleTokenizer`] or [`DalleBartTokenizer`]): the caption tokenizer of the transformer.
        transformer ([`DalleForImageGeneration`] or [`DalleBartForImageGeneration`]): the autoregressive prior over
            image codes given the caption.
        vae ([`DalleVAE`] or [`DalleVQGAN`]): the image tokenizer that turns codes into pixels (and images into codes,
            for priming): the dVAE, or a VQGAN such as ruDALL-E's.
        clip_model ([`~transformers.CLIPModel`], *optional*): scores candidates against their caption.
        clip_processor ([`~transformers.CLIPProcessor`], *optional*): tokenizer + image processor for `clip_model`.
        default_guidance_scale (`float`, defaults to 1.0): the guidance scale of calls that do not name one, saved in
            `model_index.json`: a trained pipeline can ship the setting it was evaluated with (the demo model: 2).
        clip_prompt_templates (`list[str]`, *optional*): CLIP scores against the mean text embedding of the prompt put
            in each template (`"фото, на котором изображено {}"`, ...: a converted ruDALL-E with ruCLIP ships ruCLIP's
            six), saved in `model_index.json`; by default the prompt alone.
    """

    model_cpu_offload_seq = "transformer->vae->clip_model"
    _optional_components = ["clip_model", "clip_processor"]
    # What `callback_on_step_end` can read: the image codes so far (primed and sampled, `[B, n]`), which it can also
    # replace, as `codes` or as `latents` (diffusers' name for the sampling state, as in aMUSEd, a VQ-token pipeline),
    # and the logits the step's codes were drawn from (`[B, image_vocab_size]`, after the processors).
    _callback_tensor_inputs = ["latents", "codes", "logits"]

    def __init__(
        self,
        tokenizer: DalleTokenizer | DalleBartTokenizer,
        transformer: DalleForImageGeneration | DalleBartForImageGeneration,
        vae: DalleVAE | DalleVQGAN,
        clip_model: CLIPModel | None = None,
        clip_processor: CLIPProcessor | None = None,
        default_guidance_scale: float = 1.0,
        clip_prompt_templates: list[str] | None = None,
    ):
        super().__init__()
        expected = {
            "tokenizer": (tokenizer, CAPTION_TOKENIZER_CLASSES),
            "transformer": (transformer, TRANSFORMER_CLASSES),
            "vae": (vae, IMAGE_TOKENIZER_CLASSES),
            "clip_model": (clip_model, (CLIPModel, type(None))),
            "clip_processor": (clip_processor, (CLIPProcessor, type(None))),
        }
        for name, (component, cls) in expected.items():
            # A `torch.compile`d model is checked (and saved, by diffusers) as the module it wraps.
            if not isinstance(component._orig_mod if is_compiled_module(component) else component, cls):
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
        if not _is_real(default_guidance_scale) or not 1 <= default_guidance_scale < float("inf"):
            raise ValueError(
                "`default_guidance_scale` (saved in model_index.json) must be a finite number >= 1 (1 = no guidance), "
                f"got {default_guidance_scale!r}."
            )
        self.register_modules(
            tokenizer=tokenizer, transformer=transformer, vae=vae, clip_model=clip_model, clip_processor=clip_processor
        )
        if clip_prompt_templates is not None and (
            not isinstance(clip_prompt_templates, list)
            or not clip_prompt_templates
            or not all(isinstance(t, str) and t.count("{}") == 1 for t in clip_prompt_templates)
        ):
            raise ValueError(
                "`clip_prompt_templates` must be a non-empty list of strings with one `{}` each (where the prompt "
                f"goes), got {clip_prompt_templates!r}."
            )
        self.register_to_config(
            default_guidance_scale=float(default_guidance_scale), clip_prompt_templates=clip_prompt_templates
        )
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

        The weights load in float32 unless `dtype` (or `torch_dtype`) says otherwise, as in diffusers, whatever dtype
        they are stored in (a converted ruDALL-E's are float16): half precision is for devices that compute it fast
        (`hf_dalle.device_utils`).
        """
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = torch.float32
        if not os.path.isdir(pretrained_model_name_or_path):
            # diffusers refuses, before downloading, repos whose `model_index.json` names components from libraries
            # other than diffusers/transformers (ours are `hf_dalle` classes), but loads such a folder from disk. Only
            # the pipeline's own files are downloaded: model_index.json and the folders of the components it names.
            repo_id = hub_repo_id(pretrained_model_name_or_path, "pipeline")
            download_kwargs = {key: kwargs.pop(key) for key in DOWNLOAD_KWARGS if key in kwargs}
            model_index = _read_model_index(hf_hub_download(repo_id, "model_index.json", **download_kwargs))
            folders = [f"{name}/*" for name in _pipeline_components(model_index) if name not in kwargs]
            pretrained_model_name_or_path = snapshot_download(
                repo_id, allow_patterns=["model_index.json", *folders], **download_kwargs
            )
        components = cls._check_pipeline_folder(pretrained_model_name_or_path, passed=kwargs)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))  # float32 unless asked (set above)
        if "clip_model" in components and "clip_model" not in kwargs:
            # Loaded here, where its loading report can be checked (our models' own `from_pretrained` checks theirs):
            # a CLIP folder that lacks weights is refused, never filled at random.
            kwargs["clip_model"] = load_complete_model(
                CLIPModel.from_pretrained, pretrained_model_name_or_path, subfolder="clip_model", dtype=dtype
            )
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
            transformer_kwargs = {key: kwargs.pop(key) for key in transformer_keys if key in kwargs} | {"dtype": dtype}
            transformer_class = _transformer_class(pretrained_model_name_or_path)
            kwargs["transformer"] = transformer_class.from_pretrained(
                pretrained_model_name_or_path, subfolder="transformer", **transformer_kwargs
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @staticmethod
    def _check_pipeline_folder(folder: str | os.PathLike, passed: dict) -> list[str]:
        """Name what is missing from a pipeline folder before diffusers trips over it: model_index.json, or the
        subfolder of a component it lists (unless that component is passed in `passed`). Returns the components it
        lists."""
        index_path = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index_path):
            raise FileNotFoundError(
                f"{os.fspath(folder)!r} is not a pipeline folder: it has no model_index.json (save one with "
                "`DallePipeline.save_pretrained`)."
            )
        components = _pipeline_components(_read_model_index(index_path))
        for name in components:
            if name not in passed and not os.path.isdir(os.path.join(folder, name)):
                raise FileNotFoundError(
                    f"The pipeline folder {os.fspath(folder)!r} has no {name}/ subfolder, though its model_index.json "
                    f"lists the component {name!r}."
                )
        return components

    def load_lora_weights(
        self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str = "default", **kwargs
    ) -> None:
        """
        Load a LoRA adapter of the transformer (`adapter_config.json` + `adapter_model.safetensors`, as written by
        `scripts/train_dalle.py --lora_rank R` or `hf_dalle.lora.save_lora_adapter`) from a directory or a
        Hub repo id (only those two files are downloaded; `kwargs` such as `revision`, `token`, `cache_dir` go to
        `hf_hub_download`), and activate it (needs `peft`). An adapter with NaN or infinite weights, or whose weights
        do not all load onto this transformer's adapter parameters, is refused with nothing left loaded.
        [`unload_lora_weights`] restores the base model.
        """
        load_lora_adapter(self.transformer, pretrained_model_name_or_path, adapter_name=adapter_name, **kwargs)

    def unload_lora_weights(self) -> None:
        """Remove every LoRA adapter from the transformer: it computes exactly its base weights' outputs again."""
        remove_lora_adapters(self.transformer)

    def progress_bar(self, iterable=None, total=None):
        """diffusers' bar, labelled with what its steps are here (image codes; one step samples one code of each
        candidate of a chunk) unless `set_progress_bar_config` names them."""
        config = getattr(self, "_progress_bar_config", {})
        self._progress_bar_config = {"desc": "Sampling image codes", "unit": "code", **config}
        try:
            return super().progress_bar(iterable=iterable, total=total)
        finally:
            self._progress_bar_config = config

    @property
    def image_size(self) -> int:
        """Side of the generated images: `prime_image_size`, times 2 for a wavelet decoder (`decoder_upscale`)."""
        return self.prime_image_size * self.vae.config.decoder_upscale

    @property
    def prime_image_size(self) -> int:
        """Side of the images the image tokenizer encodes (priming): the code grid times its downsampling factor."""
        return self.transformer.config.image_grid_size * self.vae.config.downsample_factor

    @property
    def guidance_scale(self) -> float:
        """The classifier-free guidance scale of the call under way. A `callback_on_step_end` may change it
        (`pipe._guidance_scale`) for the steps that follow; at 1 or below the conditional logits are used alone."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """Decode steps of the call under way, all chunks of candidates together: what a callback's `step` counts."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (from a `callback_on_step_end`, or between two of the progresses that
        [`generate_progressively`] yields) to stop sampling after the current code."""
        return self._interrupt

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
        image_prompt_mask,
        rerank,
        candidate_batch_size,
        output_type,
        callback_on_step_end_tensor_inputs,
    ):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"`prompt` must be a non-empty string or a non-empty list of them, got {prompt!r}.")
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
            if (
                not isinstance(negatives, list)
                or len(negatives) != len(prompts)
                or not all(isinstance(n, str) for n in negatives)
            ):
                raise ValueError(
                    f"`negative_prompt` must be a string or a list of {len(prompts)} strings (one per prompt), "
                    f"got {negative_prompt!r}."
                )
        if not _is_integer(num_candidates) or num_candidates < 1:
            raise ValueError(f"`num_candidates` must be a positive integer, got {num_candidates!r}.")
        if not _is_integer(num_images_per_prompt) or not 1 <= num_images_per_prompt <= num_candidates:
            raise ValueError(
                f"`num_images_per_prompt` must be an integer between 1 and num_candidates={num_candidates}, "
                f"got {num_images_per_prompt!r}."
            )
        # Non-finite settings would give NaN probabilities: refused here rather than sampled into a flat image.
        if not _is_real(temperature) or not 0 < temperature < float("inf"):
            raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
        if top_k is not None and (not _is_integer(top_k) or top_k < 0):
            raise ValueError(f"`top_k` must be a non-negative integer (0 = off), got {top_k!r}.")
        if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
            raise ValueError(f"`top_p` must be a number in (0, 1], got {top_p!r}.")
        if not _is_real(guidance_scale) or not 1 <= guidance_scale < float("inf"):
            raise ValueError(
                f"`guidance_scale` must be a finite number >= 1 (1 = no guidance), got {guidance_scale!r}."
            )
        if isinstance(generator, list):
            if len(generator) != len(prompts) * num_candidates:
                raise ValueError(
                    f"A list of generators needs one per candidate: {len(prompts)} prompts x {num_candidates} "
                    f"candidates = {len(prompts) * num_candidates}, got {len(generator)}."
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                kinds = sorted({type(g).__name__ for g in generator if not isinstance(g, torch.Generator)})
                raise ValueError(f"`generator` must be a list of torch.Generator, got a list with {kinds}.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__} "
                "(for a seed, pass torch.Generator().manual_seed(seed))."
            )
        grid = self.transformer.config.image_grid_size
        if not _is_integer(num_prime_rows):
            raise ValueError(f"`num_prime_rows` must be an integer, got {num_prime_rows!r}.")
        if image_prompt_mask is not None and (image is None or num_prime_rows):
            raise ValueError(
                "`image_prompt_mask` needs an `image` to take the codes from, and replaces `num_prime_rows`."
            )
        if rerank not in (None, "clip", "perplexity") or (rerank == "clip" and self.clip_model is None):
            raise ValueError(
                f"`rerank` must be 'clip' (needs a CLIP model), 'perplexity' or None, got {rerank!r}"
                f"{' and the pipeline has no CLIP model' if rerank == 'clip' else ''}."
            )
        if num_prime_rows and image is None:
            raise ValueError("`num_prime_rows` needs an `image` to take the rows from.")
        if image is not None and image_prompt_mask is None and not 0 < num_prime_rows < grid:
            raise ValueError(
                f"`num_prime_rows` must be between 1 and {grid - 1} when priming with an image, got {num_prime_rows}."
            )
        if not _is_integer(candidate_batch_size) or candidate_batch_size < 1:
            raise ValueError(f"`candidate_batch_size` must be a positive integer, got {candidate_batch_size!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None and not all(
            name in self._callback_tensor_inputs for name in callback_on_step_end_tensor_inputs
        ):
            unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found {unknown}."
            )

    def encode_prompt(
        self, prompts: list[str], negative_prompts: list[str] | None, do_guidance: bool, device: torch.device = None
    ):
        """The text part of the streams: caption ids `[P, max_text_length]`, and for guidance the unconditional
        (negative prompt, or empty = all pads) ids of the same shape, else `None` (on `device`)."""
        max_length = self.transformer.config.max_text_length
        text_ids = self.tokenizer.encode_captions(prompts, max_length=max_length).to(device)
        if not do_guidance:
            return text_ids, None
        uncond_ids = self.tokenizer.encode_captions(negative_prompts or [""] * len(prompts), max_length=max_length)
        return text_ids, uncond_ids.to(device)

    def prompt_warning(self, prompt: str) -> str | None:
        """
        What the model will not read of `prompt`, in a sentence short enough for a status line, or `None`:

        - words its tokenizer does not know: the byte-level BPE spells them mostly one character at a time (more than
          half of their two or more pieces are single characters), so the model has most likely never seen them ("a
          photo of a cat" to the shapes demo model); known words, even rare ones split into longer pieces, are not
          flagged;
        - the text past the model's `max_text_length` tokens, which is cut (as diffusers' pipelines say for CLIP's 77).
        """
        max_length = self.transformer.config.max_text_length
        # verbose=False: no transformers warning that the caption is longer than the model reads; we say it below.
        encoding = self.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True, verbose=False)
        pieces: dict[int, list[tuple[int, int]]] = {}
        for word, span in zip(encoding.word_ids(), encoding["offset_mapping"]):
            if word is not None:  # special tokens (a converted ruDALL-E's BOS / EOS) belong to no word
                pieces.setdefault(word, []).append(span)
        unknown = []
        for spans in pieces.values():
            single_characters = sum(len(prompt[start:end].strip()) <= 1 for start, end in spans)
            if len(spans) > 1 and 2 * single_characters > len(spans):
                word = prompt[spans[0][0] : spans[-1][1]].strip()
                if word not in unknown:
                    unknown.append(word)
        notes = []
        if unknown:
            shown = ", ".join(repr(_shorten(word, 20)) for word in unknown[:4])
            more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
            notes.append(f"Words the model's tokenizer does not know (likely never seen in training): {shown}{more}.")
        if len(encoding["input_ids"]) > max_length:
            # Cut at the first dropped token's first character: never inside a character, whatever the bytes did.
            dropped = prompt[encoding["offset_mapping"][max_length][0] :].strip()
            notes.append(f"The model reads {max_length} tokens; the rest is ignored: {_shorten(dropped, 40)!r}.")
        return " ".join(notes) or None

    def prepare_image_codes(
        self, image, num_prime_rows: int, image_prompt_mask, num_prompts: int, device: torch.device = None
    ) -> tuple[torch.LongTensor | None, torch.BoolTensor | None]:
        """The image codes kept when priming: the codes of `image` (one, or one per prompt) in raster order, `[P, G *
        G]` on `device`, and where they are kept, `[P, G * G]` booleans: the first `num_prime_rows` rows, or
        `image_prompt_mask` (`[G, G]` booleans, or one such grid per prompt). `(None, None)` without an image."""
        if image is None:
            return None, None
        grid = self.transformer.config.image_grid_size
        if image_prompt_mask is None:
            mask = torch.zeros(grid, grid, dtype=torch.bool)
            mask[:num_prime_rows] = True
        else:
            mask = _as_bool_mask(image_prompt_mask, "image_prompt_mask")
            if (
                mask.shape[-2:] != (grid, grid)
                or mask.ndim not in (2, 3)
                or (mask.ndim == 3 and len(mask) != num_prompts)
            ):
                raise ValueError(
                    f"`image_prompt_mask` must be {grid}x{grid} booleans (the code grid), or one such grid per prompt "
                    f"({num_prompts}), got shape {tuple(mask.shape)}."
                )
        return self.encode_image(image, num_prompts).to(device), mask.reshape(-1, grid * grid).expand(num_prompts, -1)

    def encode_image(self, image, num_prompts: int) -> torch.LongTensor:
        """The image tokenizer's codes of `image` (one image for all prompts, or one per prompt), `[P, G * G]`."""
        images = image if isinstance(image, list) else [image]
        if len(images) not in (1, num_prompts):
            raise ValueError(f"Pass one priming `image` or one per prompt ({num_prompts}), got {len(images)}.")
        pixels = torch.stack([self._image_to_pixels(i) for i in images])
        size = self.prime_image_size
        if tuple(pixels.shape[-2:]) == (self.image_size, self.image_size) != (size, size):
            # A decoder that outputs larger images than its encoder reads (wavelet): prime with its own output too.
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(
                f"The priming image must be {size}x{size} (the size the image tokenizer encodes"
                + (
                    f", or {self.image_size}x{self.image_size}, the size the pipeline generates"
                    if size != self.image_size
                    else ""
                )
                + f"), got {pixels.shape[-1]}x{pixels.shape[-2]}."
            )
        codes = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).indices.flatten(1)
        return codes.expand(num_prompts, -1) if codes.shape[0] == 1 else codes

    @staticmethod
    def _image_to_pixels(image) -> torch.Tensor:
        """A PIL image (any mode: 16-bit and float images are scaled from their range), an `(H, W, 3)` array (uint8,
        or floats in [0, 1]) or a `(3, H, W)` tensor in [0, 1] as a `(3, H, W)` float tensor."""
        if isinstance(image, PIL.Image.Image):
            return VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(to_rgb(image)))[0]
        if isinstance(image, np.ndarray):
            array = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
            return torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)
        if torch.is_tensor(image):
            return image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        raise ValueError(f"`image` must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")

    @staticmethod
    def draw_uniforms(generators: list[torch.Generator | None], num_steps: int) -> torch.Tensor:
        """One uniform number per sampling step for each candidate of a chunk, `[len(generators), num_steps]`, each
        row drawn from that candidate's generator (or from one shared generator, row after row), so a candidate's
        draws never depend on how the candidates are batched."""
        return torch.stack(
            [torch.rand(num_steps, generator=g, device=g.device if g is not None else "cpu").cpu() for g in generators]
        )

    @staticmethod
    def prepare_logits_processor(temperature: float, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
        """The warpers of each step's image-code scores (after guidance), in transformers' order: temperature, top-k,
        top-p; each only where it changes the distribution."""
        processors = LogitsProcessorList()
        if temperature != 1:
            processors.append(TemperatureLogitsWarper(float(temperature)))
        if top_k:
            processors.append(TopKLogitsWarper(int(top_k)))
        if top_p is not None and top_p < 1:
            processors.append(TopPLogitsWarper(float(top_p)))
        return processors

    def sample_chunks(
        self,
        captions: dict[str, torch.Tensor],
        guided: bool,
        image_codes: torch.LongTensor | None,
        image_code_mask: torch.BoolTensor | None,
        num_primed: int,
        logits_processor: LogitsProcessorList,
        generators: list[torch.Generator | None],
        num_candidates: int,
        candidate_batch_size: int,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = (),
    ) -> Iterator[tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]]:
        """
        The chunk loop: sample `num_candidates` code grids for each of the `P` prompts, `candidate_batch_size`
        candidates at a time, prompt after prompt (a chunk may span prompts). `captions` are the prompts' captions as
        the transformer's `encode_captions` gives them (with `guided`, `2 * P` rows: the prompts', then their
        unconditional captions'). Yields `(prompt_index, candidate_index, codes)`, `[B]`, `[B]` and `[B, n]`, after
        every decode step of a chunk, as its codes grow: the chunk is complete when `n = G * G`. Stops early when
        interrupted (`pipe._interrupt`).

        Candidate `i` (`len(generators) == P * num_candidates`) draws its random numbers from `generators[i]`, chunk by
        chunk, so its codes never depend on the batching. With `image_codes` (`[P, G * G]`), the first `num_primed` are
        the prefix every candidate continues, and those under `image_code_mask` after it are forced.
        """
        config = self.transformer.config
        num_rows = len(generators)
        num_prompts = num_rows // num_candidates
        num_steps = config.image_seq_length - num_primed
        self._num_timesteps = -(-num_rows // candidate_batch_size) * num_steps
        forced = image_code_mask is not None and bool(image_code_mask[:, num_primed:].any())
        with self.progress_bar(total=self.num_timesteps) as progress_bar:
            for first_row in range(0, num_rows, candidate_batch_size):
                if self.interrupt:
                    return
                rows = torch.arange(first_row, min(first_row + candidate_batch_size, num_rows))
                prompt_index = rows // num_candidates
                chunk_processor = logits_processor
                if forced:
                    fixed = FixedImageCodesLogitsProcessor(image_codes[prompt_index], image_code_mask[prompt_index])
                    chunk_processor = LogitsProcessorList([*logits_processor, fixed])
                primed = (
                    image_codes[prompt_index, :num_primed]
                    if image_codes is not None
                    else torch.zeros(len(rows), 0, dtype=torch.long, device=self._execution_device)
                )
                caption_index = torch.cat([prompt_index, prompt_index + num_prompts]) if guided else prompt_index
                codes = primed
                for codes in self.sample_codes(
                    _caption_rows(captions, caption_index),
                    guided,
                    primed,
                    self.draw_uniforms(generators[first_row : first_row + len(rows)], num_steps),
                    chunk_processor,
                    progress_bar,
                    first_step=first_row // candidate_batch_size * num_steps,
                    callback_on_step_end=callback_on_step_end,
                    callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                ):
                    yield prompt_index, rows % num_candidates, codes
                if codes.shape[1] < config.image_seq_length:  # interrupted
                    return

    @torch.no_grad()
    def sample_codes(
        self,
        captions: dict[str, torch.Tensor],
        guided: bool,
        codes: torch.LongTensor,
        uniforms: torch.Tensor,
        logits_processor: LogitsProcessorList,
        progress_bar,
        first_step: int = 0,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = (),
    ) -> Iterator[torch.LongTensor]:
        """
        Continue each row's image codes `codes` (`[B, n]`: the primed ones, possibly none) to a full grid, given its
        caption (`captions`: `B` rows of the transformer's `encode_captions`; with `guided`, then `B` unconditional
        ones), yielding the codes so far after every step, `[B, n + 1]`, ..., the full grids `[B, G * G]` last. When
        interrupted (`pipe._interrupt`) it stops without the full grids.

        Hand-written decode loop rather than `generate()`: each row samples with its own random numbers (`uniforms`,
        `[B, G * G - n]`), which `generate` cannot do. Sampling is by inverse CDF: the code whose cumulative probability
        first exceeds the row's uniform number, so one number per step and row decides the draw. The codes are the
        loop's state; the transformer turns them into its own inputs (`image_code_logits` starts the chunk into a
        cache, `next_image_code_logits` continues it by one code). After each step, `callback_on_step_end(self,
        first_step + step, position, tensors)` sees the codes so far (whose grid position `position` was just drawn)
        and may return replacements.
        """
        config = self.transformer.config
        num_steps = config.image_seq_length - codes.shape[1]
        cache, logits = self._prefill(captions, guided, codes)
        # Flags of steps whose probabilities were not finite, checked once at the end (no device sync per step).
        non_finite = torch.zeros(num_steps, dtype=torch.bool, device=logits.device)
        for step in range(num_steps):
            if self.interrupt:
                return
            if step:  # the newest codes continue the cache (for guidance, in both halves)
                newest = codes[:, -1:]
                newest = torch.cat([newest, newest]) if guided else newest
                logits = self.transformer.next_image_code_logits(captions, newest, cache)
            logits = logits.float()
            if guided:  # read at every step: a callback may change the guidance scale
                cond_logits, uncond_logits = logits.chunk(2)
                guided_logits = uncond_logits + (cond_logits - uncond_logits) * self.guidance_scale
                logits = guided_logits if self.do_classifier_free_guidance else cond_logits
            scores = logits_processor(codes, logits)
            cdf = scores.softmax(dim=-1).cumsum(dim=-1)
            non_finite[step] = ~cdf[:, -1].isfinite().all()
            threshold = uniforms[:, step : step + 1].to(cdf) * cdf[:, -1:]
            next_codes = torch.searchsorted(cdf, threshold).clamp_(max=config.image_vocab_size - 1)
            codes = torch.cat([codes, next_codes], dim=1)
            progress_bar.update()
            if callback_on_step_end is not None:
                codes, rewritten = self._run_callback(
                    callback_on_step_end, callback_on_step_end_tensor_inputs, first_step + step, codes, scores
                )
                if rewritten and step + 1 < num_steps:  # earlier codes changed: the cache holds the old ones
                    cache, _ = self._prefill(captions, guided, codes[:, :-1])
            if step + 1 < num_steps:
                yield codes
        if non_finite.any():
            raise ValueError(
                f"Sampling met non-finite probabilities (NaN or infinite logits) at step {int(non_finite.nonzero()[0])}: "
                "the model's weights or a loaded adapter hold NaN/inf values, or the temperature is too "
                "small for float32 logits. No image is returned from NaN probabilities."
            )
        yield codes

    def _prefill(
        self, captions: dict[str, torch.Tensor], guided: bool, codes: torch.LongTensor
    ) -> tuple[Cache, torch.Tensor]:
        """Run each row's caption and image codes `codes` (for guidance, then the unconditional captions with the same
        codes) through the transformer into a fresh cache: the cache and the image-code logits of the next position."""
        cache = self.transformer.make_cache()
        logits = self.transformer.image_code_logits(
            captions, torch.cat([codes, codes]) if guided else codes, cache, logits_to_keep=1
        )
        return cache, logits[:, -1]

    def _run_callback(
        self, callback, tensor_inputs: list[str], step: int, codes: torch.LongTensor, logits: torch.Tensor
    ) -> tuple[torch.LongTensor, bool]:
        """Call `callback_on_step_end` after a step; the codes it returned (as `codes`, or as `latents`, diffusers'
        name for them), else the same ones, and whether it changed codes before this step's."""
        tensors = {"latents": codes, "codes": codes, "logits": logits}
        outputs = callback(self, step, codes.shape[1] - 1, {name: tensors[name] for name in tensor_inputs})
        if not isinstance(outputs, dict):
            raise ValueError(
                f"`callback_on_step_end` must return a dict (the `callback_kwargs` it got, or replacements), got "
                f"{type(outputs).__name__}."
            )
        replaced = [outputs[name] for name in ("latents", "codes") if outputs.get(name, codes) is not codes]
        if not replaced:
            return codes, False
        new_codes, image_vocab_size = replaced[0], self.transformer.config.image_vocab_size
        if (
            not isinstance(new_codes, torch.Tensor)
            or new_codes.shape != codes.shape
            or new_codes.is_floating_point()
            or not ((new_codes >= 0) & (new_codes < image_vocab_size)).all()
        ):
            raise ValueError(
                f"`codes` returned by `callback_on_step_end` must be an integer tensor of shape {tuple(codes.shape)} "
                f"with values in [0, {image_vocab_size}), got "
                f"{tuple(new_codes.shape) if isinstance(new_codes, torch.Tensor) else type(new_codes).__name__}."
            )
        new_codes = new_codes.to(codes)
        return new_codes, not torch.equal(new_codes[:, :-1], codes[:, :-1])

    @torch.no_grad()
    def code_perplexities(
        self, captions: dict[str, torch.Tensor], codes: torch.LongTensor, sampled: torch.BoolTensor | None = None
    ) -> torch.Tensor:
        """The transformer's perplexity of each candidate's codes (`[B, G * G]`) given its caption (`captions`, the
        transformer's `encode_captions` of the `B` caption ids): `exp` of the mean cross-entropy over the codes that
        were sampled (`sampled`, `[B, G * G]`; default: all). No guidance, temperature or filtering: the model's own
        distribution, as ruDALL-E ranks its images."""
        sampled = torch.ones_like(codes, dtype=torch.bool) if sampled is None else sampled.to(codes.device)
        perplexities = []
        for row, (row_codes, row_sampled) in enumerate(zip(codes, sampled)):  # one row at a time: bounded memory
            row_captions = _caption_rows(captions, slice(row, row + 1))
            logits = self.transformer.image_code_logits(row_captions, row_codes[None, :-1])[0]
            losses = F.cross_entropy(logits.float(), row_codes, reduction="none")
            perplexities.append(losses[row_sampled].mean().exp())
        return torch.stack(perplexities)

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """Image codes `[B, G * G]` -> images `[B, 3, H, W]` in [0, 1]."""
        if not len(codes):  # an interrupted call may have finished no candidate; a VQGAN cannot decode zero codes
            return torch.zeros(0, 3, self.image_size, self.image_size)
        grid = self.transformer.config.image_grid_size
        return self.vae.decode(codes.view(-1, grid, grid).to(self.vae.device)).sample

    @torch.no_grad()
    def decode_partial(self, codes: torch.LongTensor, fill_value: float = 0.5) -> torch.Tensor:
        """Unfinished code grids `[B, n]` (raster order) as preview images `[B, 3, H, W]` in [0, 1]: decoded with the
        positions not yet sampled set to code 0, whose pixels are then painted `fill_value` (gray)."""
        grid = self.transformer.config.image_grid_size
        num_codes = codes.shape[1]
        images = self.decode(F.pad(codes, (0, grid * grid - num_codes))).float()
        sampled = (torch.arange(grid * grid, device=images.device) < num_codes).view(1, 1, grid, grid)
        sampled = F.interpolate(sampled.float(), size=images.shape[-2:], mode="nearest").bool()
        return torch.where(sampled, images, fill_value)

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
        """Each prompt's normalised CLIP text embedding; with `clip_prompt_templates`, the mean of the embeddings of
        the prompt in each template, normalised (ruCLIP's `Predictor.get_text_latents`, which ruDALL-E reranks by)."""
        templates = self.config.get("clip_prompt_templates") or ["{}"]
        embeds = []
        for template in templates:
            texts = [template.format(prompt) for prompt in prompts]
            inputs = self.clip_processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            text_embeds = self.clip_model.get_text_features(**inputs.to(self.clip_model.device))
            embeds.append(getattr(text_embeds, "pooler_output", text_embeds))
        text_embeds = torch.stack(embeds).mean(0)
        return text_embeds / text_embeds.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def generate_progressively(
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
        image_prompt_mask: torch.Tensor | np.ndarray | None = None,
        rerank: str | None = None,
        candidate_batch_size: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["DallePipeline", int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["codes"],
    ) -> Iterator[DallePipelineProgress]:
        r"""
        Generate images for `prompt`: `pipe(prompt, ...)` returns them. `pipe.generate_progressively(prompt, ...)` runs
        the same steps with the same arguments as a generator: it yields a [`DallePipelineProgress`] after each decode
        step (with the codes so far of the chunk being sampled, for previews) and after each chunk of
        `candidate_batch_size` candidates, then a last one whose `output` is what `pipe(prompt, ...)` returns. Setting
        `pipe._interrupt = True` stops sampling; the candidates finished by then are reranked and returned (a web app
        shows progress and previews this way, and stops at a time limit).

        Args:
            prompt (`str` or `list[str]`): the caption(s); lowercased and truncated to the model's text length.
            negative_prompt (`str` or `list[str]`, *optional*): with `guidance_scale > 1`, the caption to steer away
                from (default: the empty caption).
            num_candidates (`int`, defaults to 16): images sampled per prompt before reranking (the paper uses 512).
            num_images_per_prompt (`int`, defaults to 1): how many of the best candidates to return per prompt.
            temperature (`float`, defaults to 1.0): softmax temperature of the code distribution.
            top_k (`int`, *optional*): sample among the `top_k` most likely codes only (0 = all). Defaults to the
                transformer's `generation_config.top_k` (none unless the model ships one).
            top_p (`float`, *optional*): nucleus sampling, the smallest set of codes with probability >= `top_p`.
                Defaults to the transformer's `generation_config.top_p`.
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
            image_prompt_mask (`[G, G]` booleans, or one grid per prompt, *optional*): image prompts at any grid
                positions (ruDALL-E's borders) in place of `num_prime_rows`: the codes of `image` are kept where the
                mask is set and sampled elsewhere.
            rerank (`str`, *optional*): how candidates are ranked: `"clip"` (the CLIP score) or `"perplexity"` (the
                transformer's own perplexity of the sampled codes given the caption, lowest first, as ruDALL-E ranks;
                `.scores` are then perplexities). `None` (the default) means `"clip"` when the pipeline has a CLIP
                model, else no reranking (the first candidates in sampling order, `.scores` `None`).
            candidate_batch_size (`int`, defaults to 16): candidates sampled together (their random numbers are drawn
                chunk by chunk too); bounds memory for large `num_candidates`.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"`, or `"latent"` for the image codes
                (not decoded unless CLIP scores them).
            return_dict (`bool`, defaults to `True`): return a [`DallePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called
                after every sampled code as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`: `step`
                counts the decode steps of the whole call (chunk after chunk, as the progress bar does, up to
                `pipe.num_timesteps`), `timestep` is the position in the code grid (raster order) of the code just
                drawn, and `callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs` for the
                current chunk of candidates. It returns a dict: `codes` (or `latents`) in it replace the codes so far
                (the model reads the new ones; changed earlier codes are encoded again). It may change the guidance
                scale of the steps that follow (`pipe._guidance_scale`). Setting `pipe._interrupt = True` stops
                sampling: the candidates finished by then are reranked and returned (fewer images, possibly none).
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["codes"]`): what `callback_kwargs` holds,
                from `pipe._callback_tensor_inputs`: `"codes"` (the chunk's image codes so far, `[B, n]`, primed rows
                included), `"latents"` (the same codes, under diffusers' name for the sampling state) and `"logits"`
                (the scores this step's codes were drawn from, `[B, image_vocab_size]`).

        Examples:

        Returns:
            [`DallePipelineOutput`] (or `(images, scores)`): each prompt's `num_images_per_prompt` best images, best
            first, and their scores (CLIP scores, or perplexities with `rerank="perplexity"`; `None` when not
            reranked).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        # Sampling defaults shipped with the transformer (a converted ruDALL-E model: top-k 2048, top-p 0.995).
        top_k = top_k if top_k is not None else self.transformer.generation_config.top_k
        top_p = top_p if top_p is not None else self.transformer.generation_config.top_p
        if rerank is None and self.clip_model is not None:
            rerank = "clip"
        self.check_inputs(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_candidates=num_candidates,
            num_images_per_prompt=num_images_per_prompt,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            generator=generator,
            image=image,
            num_prime_rows=num_prime_rows,
            image_prompt_mask=image_prompt_mask,
            rerank=rerank,
            candidate_batch_size=candidate_batch_size,
            output_type=output_type,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative_prompts = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        num_rows = len(prompts) * num_candidates
        if rerank is None and num_candidates > num_images_per_prompt:
            logger.warning("No CLIP model in this pipeline: returning the first candidates without reranking.")
        device = self._execution_device
        config = self.transformer.config
        _warn_once(slow_half_precision_warning(device, self.transformer.dtype))

        # 2. Encode the prompts (and the unconditional captions for guidance) once for all candidates, the priming
        # image, CLIP's text side; say what the model will not read of the prompts, since the images will not show it
        prompt_warnings = [self.prompt_warning(prompt) for prompt in prompts]
        for prompt, warning in zip(prompts, prompt_warnings):
            if warning is not None:
                logger.warning(f"{_shorten(prompt, 60)!r}: {warning}")
        text_ids, uncond_ids = self.encode_prompt(prompts, negative_prompts, self.do_classifier_free_guidance, device)
        guided = uncond_ids is not None
        captions = self.transformer.encode_captions(torch.cat([text_ids, uncond_ids]) if guided else text_ids)
        image_codes, image_code_mask = self.prepare_image_codes(
            image, num_prime_rows, image_prompt_mask, len(prompts), device
        )
        text_embeds = self.clip_text_embeds(prompts) if rerank == "clip" else None

        # 3. Prepare the logits processors
        logits_processor = self.prepare_logits_processor(temperature, top_k, top_p)

        # 4. Sample the candidates, chunk by chunk (lazily: each chunk is sampled when step 5 asks for it)
        chunks = self.sample_chunks(
            captions,
            guided,
            image_codes,
            image_code_mask,
            num_prime_rows * config.image_grid_size,
            logits_processor,
            generator if isinstance(generator, list) else [generator] * num_rows,
            num_candidates,
            candidate_batch_size,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )

        # 5. Score each chunk and keep each prompt's best candidates so far: memory stays bounded for any number
        descending = {"clip": True, "perplexity": False}.get(rerank)  # the lowest perplexity ranks first
        best = BestCandidates(num_images_per_prompt, descending, num_codes=config.image_seq_length)
        num_sampled = 0
        for prompt_index, candidate_index, codes in chunks:
            if codes.shape[1] < config.image_seq_length:  # a chunk still being sampled
                yield DallePipelineProgress(num_sampled, num_rows, None, codes, prompt_index, candidate_index)
                continue
            scores = None
            if rerank == "clip":
                scores = self.clip_scores(self.decode(codes), text_embeds[prompt_index])
            elif rerank == "perplexity":
                sampled = ~image_code_mask[prompt_index] if image_code_mask is not None else None
                scores = self.code_perplexities(_caption_rows(captions, prompt_index), codes, sampled)
            best.add(prompt_index, candidate_index, codes, scores)
            num_sampled += len(codes)
            yield DallePipelineProgress(num_sampled, num_rows)

        # 6. Decode the best candidates
        grid = config.image_grid_size
        images = best.codes.view(-1, grid, grid) if output_type == "latent" else self.decode(best.codes).float().cpu()

        # 7. Post-process
        images = self.image_processor.postprocess(images, output_type=output_type)
        scores = best.scores.tolist() if best.scores is not None else None
        self.maybe_free_model_hooks()
        if not return_dict:
            output = (images, scores)
        else:
            output = DallePipelineOutput(
                images, scores, candidate_indices=best.candidate_index.tolist(), prompt_warnings=prompt_warnings
            )
        yield DallePipelineProgress(num_sampled, num_rows, output)

    def __call__(self, *args, **kwargs) -> DallePipelineOutput | tuple:
        for progress in self.generate_progressively(*args, **kwargs):
            pass
        return progress.output

    # Documented and introspected (diffusers' pipeline tests read its signature) with the arguments it passes on.
    __call__.__doc__ = generate_progressively.__doc__
    __call__.__signature__ = inspect.signature(generate_progressively).replace(
        return_annotation=DallePipelineOutput | tuple
    )


__all__ = ["BestCandidates", "DallePipeline", "DallePipelineOutput", "DallePipelineProgress"]
