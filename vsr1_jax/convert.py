"""`python -m vsr1_jax.convert hf-to-orbax | orbax-to-hf | init-stage1 ...`: the checkpoint command line, kept at
this path for the README, the launch scripts and the tests. The code is in vsr1_jax/ckpt/ (cli.py and what it
calls)."""
import logging
import sys

from vsr1_jax.ckpt.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    sys.exit(main())
