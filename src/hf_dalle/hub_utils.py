"""Model cards and uploads to the Hugging Face Hub, shared by the converter, the training scripts and the pipeline.

Model cards are Jinja templates in the package's `model_cards/` folder (read through `importlib.resources`, so they
work from a wheel as from a checkout), rendered with `huggingface_hub.ModelCard`
(the YAML metadata comes from a `ModelCardData`). Uploads are `create_repo` + `upload_folder`.
"""

import os
import uuid
from importlib.resources import as_file, files
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id


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


def write_model_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write `card` as `folder/README.md` (through a temporary file, so no half-written card is left)."""
    path = Path(folder) / "README.md"
    tmp = path.with_name(f".README.md.{uuid.uuid4().hex}.tmp")  # a plain open() keeps the usual file permissions
    try:
        tmp.write_text(str(card), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload with hf_dalle",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> CommitInfo:
    """
    Create the model repo `repo_id` if needed and upload every file of `folder` to it in one go.

    Returns the `CommitInfo` of the upload (`.commit_url`, `.oid`, `.repo_url`).
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"Cannot push {str(folder)!r} to the Hub: not a directory.")
    # A fresh HfApi reads the endpoint (HF_ENDPOINT) now; huggingface_hub's module-level functions bind it at import.
    api = HfApi(token=token, library_name="hf_dalle")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        revision=revision,
        ignore_patterns=ignore_patterns,
    )


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


__all__ = ["MODEL_CARDS_DIR", "hub_repo_id", "push_folder_to_hub", "render_model_card", "write_model_card"]
