"""Model cards and uploads to the Hugging Face Hub, shared by the converter, the training scripts and the pipeline.

Model cards are Jinja templates in the repository's `model_cards/` folder, rendered with `huggingface_hub.ModelCard`
(the YAML metadata comes from a `ModelCardData`). Uploads are `create_repo` + `upload_folder`.
"""

import hashlib
import os
import uuid
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData


# `model_cards/` at the root of the hf_dalle repository (next to `src/`).
MODEL_CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"


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
        raise FileNotFoundError(
            f"Model card template {str(template)!r} not found: expected a file, or a name of a template in "
            f"{MODEL_CARDS_DIR} ({sorted(p.stem for p in MODEL_CARDS_DIR.glob('*.md'))})."
        )
    if card_data.library_name is None:
        card_data.library_name = "hf_dalle"
    return ModelCard.from_template(card_data, template_path=str(path), **template_kwargs)


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (read in 1 MiB chunks), for the provenance table of a converted model's card."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


__all__ = ["MODEL_CARDS_DIR", "push_folder_to_hub", "render_model_card", "sha256_of", "write_model_card"]
