"""``unisde train``: train a UNet2DModel under any schedule × parameterisation (see docs/training.md).

Runs the same on one CPU, one GPU, or data-parallel under ``accelerate launch`` / ``torchrun``.
"""

help = "train a diffusers UNet2DModel under any schedule and parameterisation (accelerate, checkpoints, Hub)"
description = __doc__


def add_arguments(parser):
    from unisde.training.loop import add_training_arguments

    add_training_arguments(parser)


def run(args):
    from unisde.training.loop import end_process, train

    result = train(args)
    result.finish()
    if result.accelerator.is_main_process:
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        print(
            f"trained to step {result.global_step} (last loss {last}, {result.samples_per_second:.1f} images/s); "
            f"pipeline in {result.output_dir}"
        )
    end_process(0)  # multi-process runs only: see its docstring
    return 0
