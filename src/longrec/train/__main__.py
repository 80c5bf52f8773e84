"""`python -m longrec.train ARGS` is `longrec train ARGS`: the module torchrun starts on every rank.

    torchrun --nproc-per-node 2 -m longrec.train configs/din_synthetic.toml --out runs/din-ddp

An entry point like `longrec.cli` (the top of the layers), kept inside `longrec.train` because that is the module
name torchrun is given; pyproject.toml lets this one file import `longrec.cli`.
"""

import sys

from longrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
