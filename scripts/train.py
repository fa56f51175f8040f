#!/usr/bin/env python
"""Thin entry point over ``unisde train`` for launchers that want a script path:

accelerate launch scripts/train.py --output_dir out ...
torchrun --nproc_per_node 8 scripts/train.py --output_dir out ...
"""

import sys

from unisde.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
