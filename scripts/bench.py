#!/usr/bin/env python
"""Thin entry point over ``unisde bench`` (benchmarks against diffusers; writes BENCHMARKS.md):

python scripts/bench.py --quick --json bench.json
"""

import sys

from unisde.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
