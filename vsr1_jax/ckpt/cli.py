"""The checkpoint command line, `python -m vsr1_jax.convert` (vsr1_jax/convert.py runs `main`):

  python -m vsr1_jax.convert hf-to-orbax SRC DST [--dtype float32|bfloat16|float16] [--overwrite] [-q]
  python -m vsr1_jax.convert orbax-to-hf SRC DST [--max-shard-size 5GB] [--dtype ...] [--overwrite] [-q]
  python -m vsr1_jax.convert init-stage1 POLICY EMBEDDER DST [--seed 0] [--overwrite] [-q]   (the Stage-1 start)

hf-to-orbax / orbax-to-hf: ckpt/write.py (the DST layout: ckpt/layout.py); init-stage1: ckpt/surgery.py.
"""
from __future__ import annotations

import argparse
import sys

from vsr1_jax.ckpt.layout import CAST_DTYPES, DEFAULT_MAX_SHARD_SIZE
from vsr1_jax.ckpt.surgery import init_stage1
from vsr1_jax.ckpt.write import hf_to_orbax, orbax_to_hf
from vsr1_jax.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    """The command line; a ConvertError (any UserError) is one `error: ...` line and exit status 2 (--verbose adds
    the traceback), a failed write (disk full, permissions) exit status 1, Ctrl-C 130."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vsr1_jax.convert",
                                     description="Convert Qwen3-VL / VideoSearch-R1 checkpoints between HF "
                                                 "safetensors folders and vsr1_jax orbax folders. --verbose: "
                                                 "print the traceback of an error.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF folder (safetensors) -> orbax folder")
    b = sub.add_parser("orbax-to-hf", help="orbax folder written by hf-to-orbax -> HF folder")
    for p in (a, b):
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
        p.add_argument("--dtype", choices=sorted(CAST_DTYPES), default=None,
                       help="cast parameters (default: keep each tensor's dtype)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                   help="largest safetensors file before sharding with an index (default 5GB)")
    c = sub.add_parser("init-stage1", help="plain Qwen3-VL policy + Qwen3-VL-Embedding -> the Stage-1 start (HF "
                                           "folder in the released layout: <REFINE> added, fresh SQR head)")
    c.add_argument("policy", help="Qwen3-VL HF folder (e.g. Qwen3-VL-4B-Instruct)")
    c.add_argument("embedder", help="Qwen3-VL-Embedding HF folder (e.g. Qwen3-VL-Embedding-2B)")
    c.add_argument("dst")
    c.add_argument("--seed", type=int, default=0, help="seed of the SQR head's random init")
    c.add_argument("--no-zero-init-refine", action="store_true",
                   help="keep refine_projector's last Linear and the gate at PyTorch's default init")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "init-stage1":
            out = init_stage1(args.policy, args.embedder, args.dst, seed=args.seed,
                              zero_init_refine=not args.no_zero_init_refine, overwrite=args.overwrite,
                              quiet=args.quiet)
        elif args.cmd == "hf-to-orbax":
            out = hf_to_orbax(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, quiet=args.quiet)
        else:
            out = orbax_to_hf(args.src, args.dst, max_shard_size=args.max_shard_size, dtype=args.dtype,
                              overwrite=args.overwrite, quiet=args.quiet)
    except OSError as e:  # disk full, permissions: the staging folder is already gone
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0
