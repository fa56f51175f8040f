"""Data-parallel training with 2 real gloo CPU processes under torchrun: the run sees num_processes == 2, the
ranks hold identical weights after several steps, and a checkpoint written by both processes resumes.

Run as a script by torchrun (``python -m torch.distributed.run --standalone --nproc_per_node 2 THIS_FILE OUT
STEPS [RESUME]``); pytest drives it twice.
"""

import json
import os
import subprocess
import sys

WORKER_DEADLINE_S = 200


def _worker(out: str, steps: int, resume: str | None) -> None:
    import faulthandler

    import torch

    # a rank stuck in a collective prints every thread's stack and exits, so a hang shows where it is
    faulthandler.dump_traceback_later(WORKER_DEADLINE_S, exit=True)

    from unisde.training.loop import default_args, train

    args = default_args(
        output_dir=out,
        train_batch_size=4,
        max_train_steps=steps,
        checkpointing_steps=2,
        block_out_channels="8,16",
        norm_num_groups=4,
        attention_levels="none",
        lr_warmup_steps=0,
        logger="none",
        no_progress=True,
        learning_rate=1e-3,
        use_ema=True,
        cpu=True,
        resume_from_checkpoint=resume,
        schedule="vp-linear",
        prediction_type="epsilon",
        noise_distribution="uniform_t",
    )
    result = train(args)
    acc = result.accelerator
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(result.model).parameters()])
    gathered = acc.gather(flat[None]).reshape(acc.num_processes, -1)
    # ranks draw different noise (per-rank seeds) yet keep identical weights through the gradient all-reduce
    noise = acc.gather(torch.randn(1, 3))
    if acc.is_main_process:
        print(f"rank 0 done at step {result.global_step}", flush=True)
        with open(os.path.join(out, f"report-{steps}.json"), "w") as fh:
            json.dump(
                {
                    "num_processes": acc.num_processes,
                    "global_step": result.global_step,
                    "ranks_identical": bool((gathered == gathered[0]).all()),
                    "noise_differs": bool(not torch.equal(noise[0], noise[1])),
                    "resumed_from": result.resumed_from,
                    "losses": result.losses,
                },
                fh,
            )
    result.finish()
    from unisde.training.loop import _RETIRED_PROCESS_GROUPS

    assert len(_RETIRED_PROCESS_GROUPS) == 1  # the group outlives finish(): its destructor can deadlock (finish doc)
    from unisde.training.loop import end_process

    end_process(0)
    raise AssertionError("end_process returned in a 2-process run")


def _launch(out, steps, resume=None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(out),
        str(steps),
    ]
    if resume:
        cmd.append(resume)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_DEADLINE_S + 60, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, f"report-{steps}.json")) as fh:
        return json.load(fh)


def test_two_gloo_processes_train_in_sync_and_resume(tmp_path):
    out = tmp_path / "ddp"
    first = _launch(out, 2)
    assert first["num_processes"] == 2 and first["global_step"] == 2
    assert first["ranks_identical"] and first["noise_differs"]
    ckpt = out / "checkpoint-2"
    assert {
        "random_states_0.pkl",
        "random_states_1.pkl",
        "model.safetensors",
        "optimizer.bin",
        "unisde_checkpoint.json",
    } <= set(os.listdir(ckpt))
    manifest = json.loads((ckpt / "unisde_checkpoint.json").read_text())
    assert manifest["num_processes"] == 2
    second = _launch(out, 4, "latest")
    assert (
        second["num_processes"] == 2 and second["global_step"] == 4 and second["resumed_from"].endswith("checkpoint-2")
    )
    assert second["ranks_identical"] and len(second["losses"]) == 2
    assert (out / "checkpoint-4").is_dir() and (out / "unet").is_dir()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
