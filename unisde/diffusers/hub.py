"""Publishing a trained pipeline folder to the Hugging Face Hub (``--push_to_hub``, ``unisde push``).

The token comes from the usual places (``token`` argument, the ``HF_TOKEN`` environment variable, or the
cached ``huggingface-cli login``), resolved by huggingface_hub itself.
"""

from __future__ import annotations

import os

PIPELINE_REQUIRED = ("model_index.json", "unet", "scheduler")
IGNORE_PATTERNS = (
    "checkpoint-*",
    ".checkpoint-*",
    ".pipeline-*",
    "logs/*",
    "logs",
    "*.tmp",
    "*.old",
    "*.old/*",
    "unisde_run.json",
)
"""Training state that stays local: accelerate checkpoints, temporaries, tracker logs, the run fingerprint."""


def check_pipeline_folder(path: str) -> None:
    """ValueError unless ``path`` is a pipeline folder this package wrote (model_index.json, unet/, scheduler/)."""
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    missing = [name for name in PIPELINE_REQUIRED if not os.path.exists(os.path.join(path, name))]
    if missing:
        raise ValueError(
            f"{path!r} is not a diffusers pipeline folder: missing {', '.join(missing)} "
            "(train one with `unisde train --output_dir ...`)"
        )


def files_to_upload(path: str, ignore_patterns=IGNORE_PATTERNS) -> list[str]:
    """The relative paths ``push_folder`` uploads (huggingface_hub's own pattern filter applied)."""
    from huggingface_hub.utils import filter_repo_objects

    rel = []
    for root, _, names in os.walk(path):
        for name in names:
            rel.append(os.path.relpath(os.path.join(root, name), path).replace(os.sep, "/"))
    return sorted(filter_repo_objects(rel, ignore_patterns=list(ignore_patterns)))


def push_folder(
    path: str,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    api=None,
) -> str:
    """Create ``repo_id`` (a model repo; no error if it exists) and upload the pipeline folder ``path`` to it,
    leaving out training state (``IGNORE_PATTERNS``). Returns the commit URL."""
    from huggingface_hub import HfApi

    check_pipeline_folder(path)
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise ValueError(f"repo id {repo_id!r} is not of the form 'name' or 'user/name'")
    api = api or HfApi(token=token)
    repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=path,
        token=token,
        revision=revision,
        commit_message=commit_message or "Upload unisde pipeline",
        ignore_patterns=list(IGNORE_PATTERNS),
    )
    return str(getattr(info, "commit_url", info))


__all__ = ["push_folder", "files_to_upload", "check_pipeline_folder", "IGNORE_PATTERNS"]
