"""Model cards and uploads to the Hugging Face Hub, shared by the converters, the training scripts and the pipeline.

Model cards are Jinja templates in the package's `model_cards/` folder (read through `importlib.resources`, so they
work from a wheel as from a checkout), rendered with `huggingface_hub.ModelCard` (the YAML metadata comes from a
`ModelCardData`). Uploads are `create_repo` + `upload_folder` of an allowlist: the files a model folder is meant to
hold (weights, configs, tokenizer files, the card, sample images), so that a stray `.env`, a pickle or a notes file
in the folder stays local.
"""

import hashlib
import logging
import os
import shlex
import sys
from importlib.resources import as_file, files
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id

from .io_utils import write_file_atomically


logger = logging.getLogger(__name__)

# What `push_folder_to_hub` uploads by default (fnmatch patterns on the path in the folder; `*` crosses `/`).
UPLOAD_ALLOW_PATTERNS = [
    "README.md",
    "validation/*.png",  # the sample grids the training scripts write (the card shows the last)
    "reconstructions/*.png",
    "*.safetensors",  # weights: model.safetensors, its variants and shards, adapter_model.safetensors
    "*.safetensors.index.json",
    "*config.json",  # config.json, generation_config.json, tokenizer_config.json, adapter_config.json, ...
    *(
        pattern
        for name in ("model_index.json", "tokenizer.json", "special_tokens_map.json", "vocab.json", "merges.txt")
        for pattern in (name, f"*/{name}")
    ),
]
# Never uploaded, even where an allowed pattern matches: hidden files and folders, training checkpoints and logs.
UPLOAD_IGNORE_PATTERNS = [".*", "*/.*", "checkpoints/*", "logs/*"]


# The templates ship inside the package (`setup.cfg` package data): a `Traversable` (`/`, `read_text`, `is_file`).
MODEL_CARDS_DIR = files("hf_dalle") / "model_cards"


def render_model_card(template: str | os.PathLike, card_data: ModelCardData, **template_kwargs) -> ModelCard:
    """
    Render a model card from a Jinja template.

    Args:
        template: the name of a template in `model_cards/` (e.g. `"dalle_vae"` for `model_cards/dalle_vae.md`) or
            the path of a template file.
        card_data: the card's YAML metadata; `library_name` defaults to `"hf_dalle"`.
        template_kwargs: values for the template's variables (the fields of `card_data` are available too).
    """
    path = Path(template)
    if not path.is_file():
        path = MODEL_CARDS_DIR / f"{template}.md"
    if not path.is_file():
        names = sorted(p.name.removesuffix(".md") for p in MODEL_CARDS_DIR.iterdir() if p.name.endswith(".md"))
        raise FileNotFoundError(
            f"Model card template {str(template)!r} not found: expected a file, or a name of a template in "
            f"hf_dalle's model_cards/ ({names})."
        )
    if card_data.library_name is None:
        card_data.library_name = "hf_dalle"
    with as_file(path) as template_path:
        return ModelCard.from_template(card_data, template_path=str(template_path), **template_kwargs)


def path_for_card(value: str | os.PathLike | None) -> str | None:
    """How a model card records a source or an output: a local path relative to the working directory (only its
    last part if it lies outside), so that no absolute path of the machine ends up in a card; anything else (a Hub
    id) as given."""
    if value is None:
        return None
    path = Path(value)
    if not (path.is_absolute() or path.exists()):
        return str(value)
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return resolved.name


def command_for_card(script: str, argv: list[str] | None) -> str:
    """The command line of `scripts/{script}` for a model card (`argv` default: `sys.argv[1:]`), its local paths
    written by `path_for_card`."""

    def clean(argument: str) -> str:
        flag, equals, value = argument.partition("=")
        if equals and flag.startswith("--"):
            return f"{flag}={clean(value)}"
        if argument.startswith("-") or not (argument.startswith(("/", "~")) or os.path.exists(argument)):
            return argument
        return path_for_card(argument)

    return shlex.join(["python", f"scripts/{script}", *map(clean, sys.argv[1:] if argv is None else argv)])


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (read in 1 MiB chunks), for the provenance table of a converted model's card."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write `card` as `folder/README.md` (through a temporary file, so no half-written card is left)."""
    return write_file_atomically(Path(folder) / "README.md", lambda path: path.write_text(str(card), encoding="utf-8"))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload with hf_dalle",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    allow_patterns: list[str] | None = UPLOAD_ALLOW_PATTERNS,
    ignore_patterns: list[str] | None = UPLOAD_IGNORE_PATTERNS,
) -> CommitInfo:
    """
    Create the model repo `repo_id` if needed and upload the files of `folder` that match `allow_patterns` and no
    `ignore_patterns` (by default those a model folder is meant to hold) in one go; the others are named in a
    warning.

    Returns the `CommitInfo` of the upload (`.commit_url`, `.oid`, `.repo_url`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot push {str(folder)!r} to the Hub: not a directory.")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    uploaded = set(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
    left_out = [name for name in files if name not in uploaded and not name.startswith(("checkpoints/", "logs/"))]
    if left_out:
        logger.warning("Not uploaded from %s (not files a model folder holds): %s", folder, ", ".join(left_out))
    if not uploaded:
        raise ValueError(f"Nothing to push from {str(folder)!r}: no file matches {allow_patterns}.")
    # A fresh HfApi reads the endpoint (HF_ENDPOINT) now; huggingface_hub's module-level functions bind it at import.
    api = HfApi(token=token, library_name="hf_dalle")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        revision=revision,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
    )


def write_card_and_push(
    folder: str | os.PathLike,
    template: str | os.PathLike,
    card_data: ModelCardData,
    *,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    hub_private: bool = False,
    commit_message: str = "Upload with hf_dalle",
    **template_kwargs,
) -> CommitInfo | None:
    """
    The last step of the scripts that write a model folder (`--push_to_hub`, `--hub_model_id`, `--hub_private`):
    render the model card `template` into `folder/README.md` and, with `push_to_hub`, upload the folder
    ([`push_folder_to_hub`]) to `hub_model_id` (default: the folder's name).

    The card's `repo_id` is the Hub repo when pushing, else the folder ([`path_for_card`]). Returns the upload's
    `CommitInfo`, or `None` without `push_to_hub`.
    """
    repo_id = hub_model_id or Path(folder).resolve().name
    card = render_model_card(
        template, card_data, repo_id=repo_id if push_to_hub else path_for_card(folder), **template_kwargs
    )
    write_model_card(card, folder)
    if not push_to_hub:
        return None
    commit = push_folder_to_hub(folder, repo_id, private=hub_private or None, commit_message=commit_message)
    print(f"Pushed to {commit.repo_url} ({commit.commit_url})")
    return commit


def hub_repo_id(name_or_path: str | os.PathLike, what: str) -> str:
    """`name_or_path`, which is not a local folder, as a Hub repo id; a `FileNotFoundError` if it cannot be one (a
    local path that does not exist), rather than huggingface_hub's complaint about repo id syntax."""
    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise FileNotFoundError(
            f"No such {what} folder: {str(name_or_path)!r} (and it is not a Hub repo id)."
        ) from None
    return str(name_or_path)


__all__ = [
    "MODEL_CARDS_DIR",
    "UPLOAD_ALLOW_PATTERNS",
    "UPLOAD_IGNORE_PATTERNS",
    "command_for_card",
    "hub_repo_id",
    "path_for_card",
    "push_folder_to_hub",
    "render_model_card",
    "sha256_of",
    "write_card_and_push",
    "write_model_card",
]
