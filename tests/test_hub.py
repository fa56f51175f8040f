"""Publishing to the Hub with only the network calls replaced: huggingface_hub's own upload_folder runs and we
check the commit it would make (files, repo, message); `unisde push` and `--push_to_hub` both go through it."""

import json

import pytest
import torch

from unisde.diffusers.hub import files_to_upload, push_folder


@pytest.fixture
def offline_hub(monkeypatch):
    """Replace the HTTP-touching HfApi methods; everything else (pattern filtering, operation building) is real."""
    from huggingface_hub import HfApi, hf_api
    from huggingface_hub.hf_api import RepoUrl

    calls = {"create_repo": [], "commits": []}

    def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kw):
        calls["create_repo"].append(
            dict(repo_id=repo_id, private=private, repo_type=repo_type, exist_ok=exist_ok, token=token)
        )
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, **kw):
        calls["commits"].append(
            dict(
                repo_id=repo_id,
                message=commit_message,
                revision=kw.get("revision"),
                files=sorted(op.path_in_repo for op in operations),
                sizes={op.path_in_repo: op.upload_info.size for op in operations},
            )
        )
        return hf_api.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0",
            commit_message=commit_message,
            commit_description="",
            oid="0" * 40,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(
        HfApi, "_validate_yaml", lambda self, content, repo_type=None, token=None: None
    )  # server-side check
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)  # the single-commit path, not the streaming uploader
    return calls


def _fake_run(path):
    """A pipeline folder plus the training state that must stay local."""
    from diffusers import DDPMPipeline, UNet2DModel

    from unisde.diffusers.scheduler import UnifiedScheduler

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=UnifiedScheduler(sampler="ddim")).save_pretrained(path)
    (path / "README.md").write_text("---\nlibrary_name: diffusers\ntags:\n- unisde\n---\n# m\n")
    for junk in ("checkpoint-10/model.safetensors", ".checkpoint-12.tmp/x", "logs/unisde/events.out", "unet.old/x"):
        (path / junk).parent.mkdir(parents=True, exist_ok=True)
        (path / junk).write_text("x")
    (path / "unisde_run.json").write_text("{}")
    return path


EXPECTED = [
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


def test_push_folder_uploads_the_pipeline_only(tmp_path, offline_hub):
    folder = _fake_run(tmp_path / "run")
    folder_files = files_to_upload(str(folder))
    url = push_folder(str(folder), "me/digits", token="hf_test", private=True)
    assert url == "https://huggingface.co/me/digits/commit/0"
    assert offline_hub["create_repo"] == [
        dict(repo_id="me/digits", private=True, repo_type="model", exist_ok=True, token="hf_test")
    ]
    (commit,) = offline_hub["commits"]
    assert commit["repo_id"] == "me/digits" and commit["files"] == EXPECTED
    assert commit["files"] == folder_files
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert commit["sizes"]["unet/diffusion_pytorch_model.safetensors"] == weights.stat().st_size


def test_push_rejects_a_folder_that_is_not_a_pipeline(tmp_path, offline_hub):
    with pytest.raises(ValueError, match="not a diffusers pipeline folder: missing model_index.json, unet, scheduler"):
        push_folder(str(tmp_path), "me/x")
    folder = _fake_run(tmp_path / "run")
    with pytest.raises(ValueError, match="repo id 'a/b/c'"):
        push_folder(str(folder), "a/b/c")
    assert offline_hub["create_repo"] == [] and offline_hub["commits"] == []


def test_unisde_push_command(tmp_path, offline_hub, capsys):
    from unisde.cli import main

    folder = _fake_run(tmp_path / "run")
    assert main(["push", str(folder), "me/digits", "--dry_run"]) == 0
    assert capsys.readouterr().out.split() == files_to_upload(str(folder))
    assert offline_hub["commits"] == []
    assert main(["push", str(folder), "me/digits", "--commit_message", "first"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/me/digits/commit/0"
    assert offline_hub["commits"][0]["message"] == "first"
    assert main(["push", str(tmp_path / "nope"), "me/digits"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_train_push_to_hub(tmp_path, offline_hub):
    from unisde.training.loop import default_args, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine
    out = tmp_path / "run"
    try:
        result = train(
            default_args(
                output_dir=str(out),
                train_batch_size=4,
                max_train_steps=1,
                block_out_channels="8,16",
                norm_num_groups=4,
                attention_levels="none",
                logger="none",
                no_progress=True,
                push_to_hub=True,
                hub_model_id="me/digits-ddpm",
                hub_token="hf_test",
            )
        )
    finally:
        torch.set_num_threads(threads)
    assert result.global_step == 1 and (out / "checkpoint-1").is_dir()
    (commit,) = offline_hub["commits"]
    assert commit["repo_id"] == "me/digits-ddpm" and commit["files"] == EXPECTED
    card = (out / "README.md").read_text()
    assert 'unisde.load_pipeline("me/digits-ddpm"' in card and "hf_test" not in card
    assert "hf_test" not in json.dumps(json.loads((out / "unisde_run.json").read_text()))
