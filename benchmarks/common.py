"""What every benchmark shares: the report (a JSON with the command, the device, the figures and the production
functions timed, rewritten after each part so a run stopped by a time limit keeps what it measured), progress
lines, timing, the ceilings measured in the same process (HBM read bandwidth, bf16 matmul peak), FLOP counts and
MFU, the decode roofline, video-shaped prompts, random 2B models on the tiny tokenizer, the configs of the
production runners, and the HF PyTorch baselines (eager and static cache + torch.compile).

Models are the real configs with random weights. Where a bench compares with HF transformers, both sides hold the
same tensors (HF initialises, ours is converted from its state dict).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import difflib
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _hf_part_only(argv: list[str]) -> bool:
    return "--part=hf" in argv or any(a == "--part" and b == "hf" for a, b in zip(argv, argv[1:]))


# A bench's HF-only part (`--part hf`) leaves the GPU to PyTorch: JAX must not take its usual 75% pool, and that
# has to be in the environment before JAX creates its GPU client (below, at import).
if _hf_part_only(sys.argv):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  after the allocator setting above
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402
from vsr1_jax.ckpt.read import Models  # noqa: E402
from vsr1_jax.errors import UserError, run_cli  # noqa: E402
from vsr1_jax.models import sqr as S  # noqa: E402
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig, get_preset  # noqa: E402
from vsr1_jax.models.qwen3_vl.model import Qwen3VL  # noqa: E402
from vsr1_jax.models.qwen3_vl.run_options import RunOptions  # noqa: E402
from vsr1_jax.models.qwen3_vl.params import model_from_hf_state_dict  # noqa: E402
from vsr1_jax.models.qwen3_vl.rope import token_types  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_T0 = time.perf_counter()


def log(*a) -> None:
    """A progress line on stderr, stamped with the seconds since the bench started (where a time limit struck)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s]", *a, flush=True, file=sys.stderr)


def _torch_device() -> str:
    try:
        import torch  # lazy and optional: without torch a bench runs with no HF comparison
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


DEVICE = _torch_device()
GPU = jax.default_backend() == "gpu"


def qualname(fn) -> str:
    """`module.Class.method` of a function or method (what a report's `code_path` lists)."""
    fn = getattr(fn, "__func__", fn)
    fn = getattr(fn, "__wrapped__", fn)
    return f"{fn.__module__}.{fn.__qualname__}"


# ---- the report ---------------------------------------------------------------------------------------------------
def device_info() -> dict:
    """The accelerator, the libraries and the settings that change a figure."""
    d = jax.devices()[0]
    out = {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
           "jax": jax.__version__, "python": platform.python_version(), "host": platform.node(),
           "cpu": _cpu_model(), "env": {k: v for k, v in os.environ.items()
                                        if k.startswith(("XLA_", "JAX_", "TF_GPU", "CUDA_VISIBLE"))}}
    try:
        import torch  # lazy and optional: the HF side's versions
        import transformers  # lazy and optional: as above
        out.update(torch=torch.__version__, transformers=transformers.__version__,
                   torch_cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError:
        out.update(torch=None, transformers=None)
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class Report:
    """`<out>/bench_<name>.json`: the command, the device, `code_path` (the production functions timed), the
    figures, and `complete` (false until the bench ends: a run stopped early leaves the parts it finished)."""

    def __init__(self, name: str, argv: list[str] | None, out: str):
        self.path = os.path.join(out, f"bench_{name}.json")
        os.makedirs(out, exist_ok=True)
        args = sys.argv[1:] if argv is None else list(argv)
        self.data: dict = {"bench": name, "command": f"python -m benchmarks.{name} " + shlex.join(args),
                           "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "complete": False, "device": device_info(), "code_path": []}
        self._t0 = time.perf_counter()
        log(f"bench {name}: {self.data['device']['device_kind']} x{self.data['device']['device_count']}, "
            f"jax {jax.__version__}; writing {self.path}")

    def code(self, *fns) -> None:
        """Record production functions this bench times (qualified names, in order, once each)."""
        for fn in fns:
            name = fn if isinstance(fn, str) else qualname(fn)
            if name not in self.data["code_path"]:
                self.data["code_path"].append(name)

    def __setitem__(self, key, value):
        self.data[key] = value

    def __getitem__(self, key):
        return self.data[key]

    def update(self, **kw) -> None:
        self.data.update(kw)

    def save(self) -> None:
        self.data["wall_s"] = time.perf_counter() - self._t0
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=_json_default)
        os.replace(tmp, self.path)

    def finish(self) -> dict:
        self.data["complete"] = True
        self.save()
        log(f"wrote {self.path}")
        return self.data


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def int_list(text: str) -> tuple[int, ...]:
    """argparse type of "1,8,64"-style options."""
    return tuple(int(x) for x in text.split(","))


def parser(doc: str, *, preset: str = "qwen3_vl_2b", hf: str | None = None, frames_hw: tuple[str, str] | None = None,
           runner_steps: int | None = None) -> argparse.ArgumentParser:
    """The options every bench shares: --preset, --out; --hf (the HF baselines, default `hf`) where it has them;
    --frames-hw (default, help) where it takes a video size; --config/--set/--part/--steps (default `runner_steps`)
    for the benches that build a production runner from a config and time its steps."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=preset, help="model preset ('tiny' for a CPU smoke run)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench_<name>.json")
    if hf is not None:
        ap.add_argument("--hf", default=hf, help="HF PyTorch baselines: comma list of eager (dynamic cache) and static "
                                                 "(static cache + torch.compile reduce-overhead on CUDA), or none")
    if frames_hw is not None:
        ap.add_argument("--frames-hw", type=int_list, default=int_list(frames_hw[0]), help=frames_hw[1])
    if runner_steps is not None:
        ap.add_argument("--steps", type=int, default=runner_steps,
                        help="timed steps (after one warm-up step that compiles)")
        ap.add_argument("--config", default="base", help="configs/<name>.py the runner's settings come from")
        ap.add_argument("--set", action="append", default=[], help="config override a.b.c=value (repeatable)")
        ap.add_argument("--part", default="all", choices=("all", "ours", "hf"),
                        help="all: ours, then the HF baselines in the same process; ours / hf: one side (on an 80-GB "
                             "card JAX's memory pool and the HF training step do not both fit: two commands)")
    return ap


def bench_main(name: str, ap: argparse.ArgumentParser, argv, run) -> dict:
    """Parse `argv`, open the report `bench_<name>.json` (the shared options recorded), `run(args, report)`, and
    mark it complete."""
    args = ap.parse_args(argv)
    # settings a user can mistype fail here, before any measurement (one `error:` line through run_cli)
    if getattr(args, "hf", None) is not None:
        hf_impls(args.hf)
    if getattr(args, "config", None) is not None:
        load_config(args.config, args.set)
    report = Report(name, argv, args.out)
    report.update(**{k: getattr(args, k) for k in ("preset", "config", "set", "part", "hf") if hasattr(args, k)})
    run(args, report)
    return report.finish()


def cli(main) -> None:
    """`python -m benchmarks.<name>`: run `main(argv)` (which returns the report, for tests) and exit 0, or with the
    project's errors as one `error: ...` line and status 2 (vsr1_jax/errors.run_cli)."""
    def run(argv):
        main(argv)
        return 0
    sys.exit(run_cli(run))


def hf_impls(arg: str) -> tuple[str, ...]:
    impls = tuple(x for x in arg.split(",") if x and x != "none")
    bad = [x for x in impls if x not in HF_IMPLS]
    if bad:
        raise UserError(f"--hf={arg!r}: unknown {bad}; expected a comma list of {HF_IMPLS} or none")
    return impls


# ---- timing -------------------------------------------------------------------------------------------------------
def timeit_fresh(fn, fresh, n=5, warmup=1):
    """Median seconds of `fn(fresh())`, waiting for its result; `fresh()` (untimed) makes the argument, so a call
    that consumes (donates) it gets a new one each time."""
    ts = []
    for i in range(warmup + n):
        a = jax.block_until_ready(fresh())
        t = time.perf_counter()
        jax.block_until_ready(fn(a))
        if i >= warmup:
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def timeit(fn, n=5, warmup=1):
    """Median seconds of `fn()`, waiting for its result."""
    return timeit_fresh(lambda _: fn(), lambda: None, n=n, warmup=warmup)


def _async_seconds(fn, n: int = 20, warmup: int = 3, wait=jax.block_until_ready) -> float:
    """Mean seconds per call of `n` calls queued back to back, waiting (`wait(result)`) only for the last: the
    launch and the result's allocation overlap the previous call's kernel, as in a stream of work."""
    for _ in range(warmup):
        wait(fn())
    t = time.perf_counter()
    for _ in range(n):
        r = fn()
    wait(r)
    return (time.perf_counter() - t) / n


# ---- measured ceilings --------------------------------------------------------------------------------------------
DATASHEET = {  # dense bf16 FLOP/s and HBM bandwidth (B/s) by device kind
    "H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12),
}


def datasheet(kind: str):
    for k, v in DATASHEET.items():
        if k in kind:
            return v
    return (None, None)


def read_bandwidth(gib: float | None = None) -> float:
    """HBM read bandwidth (B/s) of a large reduction: every byte is read once and almost nothing is written
    (8 GiB on GPUs, 64 MiB elsewhere)."""
    gib = (8.0 if GPU else 0.0625) if gib is None else gib
    n = int(gib * (1 << 30)) // 2
    x = jnp.ones((n // 4096, 4096), jnp.bfloat16)
    f = jax.jit(lambda a: jnp.sum(a, axis=0, dtype=jnp.float32))
    t = _async_seconds(lambda: f(x), n=10)
    del x
    return n * 2 / t


def matmul_peak(n: int | None = None) -> float:
    """bf16 FLOP/s of an n x n x n matrix product of random data through XLA, calls queued back to back."""
    n = (8192 if GPU else 512) if n is None else n
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n ** 3 / _async_seconds(lambda: f(a, b), n=20 if GPU else 3, warmup=3 if GPU else 1)


def torch_matmul_peak(n: int = 8192) -> float | None:
    """The same product through PyTorch (cuBLAS) on the same GPU, or None without torch on a GPU: the bf16
    ceiling is the faster of the two libraries, not the one our code happens to use."""
    if DEVICE != "cuda":
        return None
    import torch  # lazy and optional: only the ceiling's second opinion needs torch
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = _async_seconds(lambda: a @ b, wait=lambda _: torch.cuda.synchronize())
    del a, b
    empty_cache()
    return 2 * n ** 3 / t


def ceilings() -> dict:
    """The measured ceilings of this run: HBM read bandwidth, and the bf16 matrix peak as the faster of XLA's and
    PyTorch's 8192^3 product (`matmul_peak_flops`, what MFU is reported against), with the datasheet figures."""
    kind = jax.devices()[0].device_kind
    peak_ds, bw_ds = datasheet(kind)
    bw, xla_peak, torch_peak = read_bandwidth(), matmul_peak(), torch_matmul_peak()
    peak = max(xla_peak, torch_peak or 0.0)
    out = {"read_bandwidth_Bps": bw, "matmul_peak_flops": peak, "xla_matmul_flops": xla_peak,
           "torch_matmul_flops": torch_peak, "datasheet_bf16_flops": peak_ds, "datasheet_hbm_Bps": bw_ds}
    log(f"measured: HBM read {bw / 1e12:.2f} TB/s" + (f" ({bw / bw_ds:.0%} of the {bw_ds / 1e12:.1f} TB/s datasheet)"
                                                      if bw_ds else "")
        + f", bf16 matmul {xla_peak / 1e12:.1f} TFLOP/s through XLA"
        + (f", {torch_peak / 1e12:.0f} through PyTorch" if torch_peak else "")
        + (f"; peak {peak / 1e12:.0f} = {peak / peak_ds:.0%} of datasheet" if peak_ds else ""))
    return out


def peak_memory() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def compiled_memory(compiled) -> dict:
    """XLA's own account of a compiled step's device memory (arguments, outputs, aliased/donated, temporaries) and
    the peak it implies."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


# ---- FLOPs, MFU, the decode roofline ------------------------------------------------------------------------------
def prefill_flops(cfg: Qwen3VLConfig, T: int, grid) -> float:
    """Matmul FLOPs of one prefill (causal attention counted at half), vision included, LM head on 1 token."""
    t, v = cfg.text, cfg.vision
    D, I, L, hd, Hq, K = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.head_dim, t.num_attention_heads, \
        t.num_key_value_heads
    per_tok = 2 * (D * Hq * hd + 2 * D * K * hd + Hq * hd * D + 3 * D * I)
    text = L * (per_tok * T + 2 * T * T * Hq * hd)  # QK^T and PV, causal half: 2 * (2 T^2 Hq hd) / 2
    vis = vision_encoder_flops(cfg, grid) if grid is not None else 0.0
    mergers = 0.0
    if grid is not None:
        n = int(np.prod(grid))
        d4 = v.hidden_size * v.merge_unit
        mergers = (1 + len(v.deepstack_visual_indexes)) * 2 * (n // v.merge_unit) * (d4 * d4 + d4 * D)
    return float(text + vis + mergers + 2 * D * t.vocab_size)


def vision_encoder_flops(cfg: Qwen3VLConfig, grid) -> float:
    v = cfg.vision
    gt, gh, gw = grid
    n, hw, d, vi = gt * gh * gw, gh * gw, v.hidden_size, v.intermediate_size
    return float(2 * n * v.patch_dim * d + v.depth * (2 * n * (4 * d * d + 2 * d * vi) + 4 * gt * hw * hw * d))


def forward_flops(cfg: Qwen3VLConfig, T: int, grid, head_tokens: int) -> float:
    """Model FLOPs of one row's forward with the LM head over `head_tokens` positions (the labelled or scored ones)."""
    return prefill_flops(cfg, T, grid) + 2 * cfg.text.hidden_size * cfg.text.vocab_size * (head_tokens - 1)


def train_flops(cfg: Qwen3VLConfig, T: int, grid, label_tokens: int) -> float:
    """Model FLOPs of one SFT/GRPO row: forward of everything, backward (2x) of everything but the frozen vision
    encoder, the LM head over the label tokens only (rematerialisation not counted, as MFU usually is)."""
    fwd = forward_flops(cfg, T, grid, label_tokens)
    return fwd + 2 * (fwd - (vision_encoder_flops(cfg, grid) if grid is not None else 0.0))


def mfu_fields(flops: float, seconds: float, ceil: dict) -> dict:
    """MFU of `flops` done in `seconds` against this run's measured bf16 peak and the device's datasheet peak."""
    ds = ceil["datasheet_bf16_flops"]
    return {"mfu_measured_peak": flops / seconds / ceil["matmul_peak_flops"],
            "mfu_datasheet": flops / seconds / ds if ds else None}


def mfu_text(r: dict) -> str:
    return f"MFU {r['mfu_measured_peak']:.1%} of the measured peak" + (
        f", {r['mfu_datasheet']:.1%} of the datasheet" if r["mfu_datasheet"] else "")


def decode_bytes(cfg: Qwen3VLConfig, rows: int, mean_len: float, dtype_bytes: int = 2) -> float:
    """Bytes one decode step must read: the decoder and LM-head weights once, plus the live KV cache of every
    row (mean_len slots each)."""
    tc = cfg.text
    weights = dtype_bytes * (tc.num_hidden_layers * (tc.hidden_size * (tc.num_attention_heads
                                                                        + 2 * tc.num_key_value_heads) * tc.head_dim
                                                      + tc.num_attention_heads * tc.head_dim * tc.hidden_size
                                                      + 3 * tc.hidden_size * tc.intermediate_size)
                             + tc.vocab_size * tc.hidden_size)
    kv_per_tok = dtype_bytes * tc.num_hidden_layers * 2 * tc.num_key_value_heads * tc.head_dim
    return weights + rows * mean_len * kv_per_tok


def decode_row(step_s: float, cfg: Qwen3VLConfig, rows: int, mean_len: float, ceil: dict) -> dict:
    """tokens/s, step time and the fraction of the read roofline of a decode step of `rows` rows."""
    roof = decode_bytes(cfg, rows, mean_len) / ceil["read_bandwidth_Bps"]
    return {"tokens_per_s": rows / step_s, "step_ms": step_s * 1e3, "roofline_step_ms": roof * 1e3,
            "fraction_of_roofline": roof / step_s}


# ---- inputs and models --------------------------------------------------------------------------------------------
def random_text_ids(rng: np.random.RandomState, n: int, cfg: Qwen3VLConfig) -> list[int]:
    """n random text token ids below min(5000, vocab / 2), none of them a vision token id (with
    `tiny_token_config`'s ids, which lie in that range, a drawn image placeholder would be a vision run without a
    grid: the 2026-12-07 H100 run of `benchmarks.sft --part hf` failed so)."""
    hi = min(5000, cfg.text.vocab_size // 2)
    special = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
    return [1 if int(i) in special else int(i) for i in rng.randint(1, hi, size=n)]


def video_prompt(cfg: Qwen3VLConfig, groups: int, h: int, w: int, text_before=64, text_after=32, seed=0):
    """Token ids laid out like a processed video prompt (timestamp, vision_start, pads, vision_end per 2-frame
    group) and random pixel rows. h, w in patches (multiples of 2)."""
    rng = np.random.RandomState(seed)
    per = h * w // cfg.vision.merge_unit
    ids = random_text_ids(rng, text_before, cfg)
    for _ in range(groups):
        ids += random_text_ids(rng, 1, cfg) + [cfg.vision_start_token_id] + [cfg.video_token_id] * per + [
            cfg.vision_end_token_id]
    ids += random_text_ids(rng, text_after, cfg)
    grid = (groups, h, w)
    px = rng.randn(groups * h * w, cfg.vision.patch_dim).astype(np.float32)
    return np.asarray([ids], np.int32), grid, px


def bench_opts(config_model=None, **overrides) -> RunOptions:
    """The production options: `RunOptions.from_config` of configs/base.py's `model` section (bf16, fused
    attention and the flash-decoding kernel on NVIDIA GPUs, the production decode loop), with overrides."""
    model = load_config("base").model if config_model is None else config_model
    return RunOptions.from_config(model, **overrides)


def tiny_token_config(cfg: Qwen3VLConfig) -> Qwen3VLConfig:
    """`cfg` with the tiny tokenizer's vision token ids (the benches that run the production text path use it in
    place of Qwen's tokenizer, which the accelerator machine does not hold: only a few text tokens differ)."""
    tok = build_tiny_tokenizer()
    ids = dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
                   tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                              "<|vision_end|>"])))
    return dataclasses.replace(cfg, **ids)


def embedder_preset(preset: str) -> str:
    """The query embedder's preset beside a policy preset (Qwen3-VL-Embedding-2B beside the 2B policy)."""
    return "qwen3_vl_embedding_2b" if preset == "qwen3_vl_2b" else preset


def build_random(cfg: Qwen3VLConfig, dtype, seed: int) -> Qwen3VL:
    """A random Qwen3VL with `dtype` parameters: initialised on the device in one jitted call on GPUs (seconds for
    2B), eagerly elsewhere (compiling the initialiser costs more than running it for the tiny smoke models)."""
    if GPU:
        return nnx.jit(lambda: Qwen3VL(cfg, param_dtype=dtype, rngs=nnx.Rngs(seed)))()
    return Qwen3VL(cfg, param_dtype=dtype, rngs=nnx.Rngs(seed))


def random_models(preset: str, dtype="bfloat16", seed: int = 0) -> Models:
    """Random policy (preset), SQR head and query embedder (the embedding model of the same size) on the tiny
    tokenizer, built on the device in `dtype`: what `vsr1_jax.ckpt.read.load_checkpoint` returns for a checkpoint."""
    tok = build_tiny_tokenizer()
    pcfg = tiny_token_config(get_preset(preset))
    ecfg = tiny_token_config(get_preset(embedder_preset(preset)))
    dt = jnp.dtype(dtype)
    t = time.perf_counter()
    policy, embedder = build_random(pcfg, dt, seed), build_random(ecfg, dt, seed + 1)
    E = ecfg.text.hidden_size
    head = S.SQRHead(S.SQRConfig(policy_hidden=pcfg.text.hidden_size, retrieval_dim=E, embedder_hidden=E,
                                 zero_init_refine=False), rngs=nnx.Rngs(seed + 2))
    jax.block_until_ready(nnx.state(policy))
    log(f"random {preset} policy + {embedder_preset(preset)} embedder ({dtype}) in {time.perf_counter() - t:.1f} s")
    return Models(policy, head, embedder, tok, tok)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class HashEmbedder:
    """Search engine of the benches' synthetic corpus: unit vectors from a hash of the text / the video bytes (the
    bench times training steps, not retrieval quality), of the query embedder's width."""

    def __init__(self, dim: int):
        self.dim = dim

    def _vec(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        return unit_vectors(1, self.dim, seed)[0]

    def embed_texts(self, texts, batch_size=32):
        return np.stack([self._vec(t.encode()) for t in texts])

    def embed_videos(self, videos, batch_size=8):
        return np.stack([self._vec(np.ascontiguousarray(v[:, ::16, ::16]).tobytes()) for v in videos])


def synthetic_dataset(root: str, *, dim: int, frames: int, height: int, width: int, train_videos: int = 4,
                      test_videos: int = 2, seed: int = 0):
    """A minimal prepared dataset (`vsr1_jax.data.synthetic`, the original's layout) under `root/bench/`, videos of
    `frames` frames at height x width (sized for the prompt length a bench wants), embedded by `HashEmbedder(dim)`.
    Returns its PreparedPaths."""
    from vsr1_jax.data.synthetic import build_synthetic_dataset  # lazy: only the training benches build data
    sys.path.insert(0, str(ROOT))
    from configs._synthetic import get_synthetic_config  # lazy: the repo-root configs package, as above
    c = get_synthetic_config()
    c.seed = seed
    c.train.num_videos, c.test.num_videos = train_videos, test_videos
    c.video.min_frames = c.video.max_frames = frames
    c.video.height, c.video.width = height, width
    c.video.shape_size = max(8, min(height, width) // 6)
    c.progress = False
    t = time.perf_counter()
    build = build_synthetic_dataset(root, "bench", c, embedder=HashEmbedder(dim), overwrite=True)
    log(f"synthetic dataset: {train_videos} + {test_videos} videos of {frames} frames at {height}x{width} under "
        f"{root}/bench in {time.perf_counter() - t:.1f} s")
    return build


def runner_inputs(args, report: "Report", name: str, overrides):
    """What a runner bench builds before its task: random models (`args.preset`), a synthetic prepared dataset in a
    temp folder with videos of `args.frames_hw`, and the config `configs/<args.config>.py` + `overrides(args, root)`
    (recorded in the report). Returns (models, config)."""
    root = tempfile.mkdtemp(prefix=f"bench_{name}_")
    models = random_models(args.preset)
    f, h, w = args.frames_hw
    synthetic_dataset(root, dim=models.embedder.cfg.text.hidden_size, frames=f, height=h, width=w)
    report["config_overrides"] = overrides(args, root)
    return models, load_config(args.config, report["config_overrides"])


# ---- configs of the production runners ----------------------------------------------------------------------------
def load_config(name: str = "base", overrides: list[str] = ()):
    """`configs/<name>.py`'s get_config() with `a.b.c=value` overrides applied, as
    `python -m vsr1_jax.main --config=configs/<name>.py --config.a.b.c=value` builds it (values parsed as Python
    literals, else taken as strings)."""
    path = ROOT / "configs" / f"{name}.py"
    if not path.exists():
        raise UserError(f"--config={name}: {path} not found; name a file of configs/ (e.g. base, charades)")
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for item in overrides:
        key, _, raw = item.partition("=")
        if not _:
            raise UserError(f"--set {item!r}: expected a.b.c=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = c
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            if p not in node:
                raise UserError(f"--set {item!r}: configs/{name}.py has no section {'.'.join(parts[:i + 1])!r}")
            node = node[p]
        if parts[-1] not in node:
            close = difflib.get_close_matches(parts[-1], list(node.keys()), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise UserError(f"--set {item!r}: configs/{name}.py has no field {key!r}{hint}")
        node[parts[-1]] = value
    return c


# ---- HF PyTorch ---------------------------------------------------------------------------------------------------
HF_IMPLS = ("eager", "static")


def empty_cache() -> None:
    import torch  # lazy: only the HF side of a comparison needs torch
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def sync() -> None:
    import torch  # lazy: only the HF side of a comparison needs torch
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def hf_and_ours(cfg: Qwen3VLConfig, dtype: str, seed=0, with_hf=True, with_ours=True):
    """A random HF model on the torch device and our model with the same tensors (ours only: a random model built
    on the device; HF only: `with_ours=False`, ours is None)."""
    if not with_hf:
        t = time.perf_counter()
        ours = build_random(cfg, jnp.dtype(dtype), seed)
        log(f"built ours ({dtype}) in {time.perf_counter() - t:.1f}s")
        return None, ours
    # lazy: torch and transformers are only needed for the HF side of a comparison
    import torch
    from transformers import Qwen3VLConfig as HFConfig, Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    tdt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    hcfg = HFConfig(**cfg.to_hf_dict())
    t = time.perf_counter()
    with torch.device(DEVICE):
        hf = Qwen3VLForConditionalGeneration._from_config(hcfg, dtype=tdt, attn_implementation="sdpa").eval()
    ours = None
    if with_ours:
        sd = {k: v.detach().float().cpu().numpy() for k, v in hf.state_dict().items()}
        ours = model_from_hf_state_dict(cfg, sd, dtype=jnp.dtype(dtype))
        del sd
    log(f"built HF{' + ours' if with_ours else ''} ({dtype}) in {time.perf_counter() - t:.1f}s")
    return hf, ours


def hf_inputs(cfg, ids, grid, px, dtype, rows: int = 1):
    """HF generate/forward inputs of `rows` copies of one video prompt."""
    import torch  # lazy: only the HF side of a comparison needs torch
    ids = np.repeat(np.asarray(ids), rows, 0)
    out = dict(input_ids=torch.tensor(ids, dtype=torch.long, device=DEVICE),
               attention_mask=torch.ones(ids.shape, dtype=torch.long, device=DEVICE),
               mm_token_type_ids=torch.tensor(token_types(ids, cfg.image_token_id, cfg.video_token_id), device=DEVICE))
    if grid is not None:
        out.update(pixel_values_videos=torch.tensor(np.concatenate([px] * rows), device=DEVICE).to(dtype),
                   video_grid_thw=torch.tensor([grid] * rows, device=DEVICE))
    return out


def hf_generate_kwargs(impl: str, fullgraph: bool = True) -> dict:
    """HF `generate` keyword arguments of a baseline: "eager" = the dynamic cache, no compilation; "static" = the
    static cache, whose decode step transformers compiles (`CompileConfig`, mode reduce-overhead: CUDA graphs) on
    CUDA; on CPU the static cache runs uncompiled (`disable_compile`)."""
    if impl == "eager":
        return {}
    if impl == "static":
        from transformers import CompileConfig  # lazy: only the HF side of a comparison needs transformers
        kw = dict(cache_implementation="static")
        if DEVICE == "cuda":
            kw["compile_config"] = CompileConfig(fullgraph=fullgraph, mode="reduce-overhead")
        else:
            kw["disable_compile"] = True
        return kw
    raise ValueError(f"HF baseline {impl!r}: expected one of {HF_IMPLS}")


class HFGenerate:
    """`hf.generate` of one baseline, warmed up (compilation excluded from every timing). The static baseline
    first tries fullgraph compilation; if the model breaks the graph it falls back to fullgraph=False and says so
    (`fullgraph` in `describe()`)."""

    def __init__(self, hf, impl: str):
        self.hf, self.impl, self.fullgraph = hf, impl, impl == "static" and DEVICE == "cuda"

    def describe(self) -> dict:
        return {"impl": f"hf_{self.impl}", "cache": "dynamic" if self.impl == "eager" else "static",
                "torch_compile": ({"mode": "reduce-overhead", "fullgraph": self.fullgraph}
                                  if self.impl == "static" and DEVICE == "cuda" else None)}

    def warmup(self, inp: dict, new_tokens: int, do_sample: bool = False) -> None:
        """An untimed call first: the static baseline compiles and captures its CUDA graphs for this shape (the
        whole length: the static cache is sized by it); eager only initialises its kernels (a few tokens)."""
        self(inp, new_tokens if self.impl == "static" else min(new_tokens, 4), do_sample)

    def seconds(self, inp: dict, new_tokens: int) -> float:
        """Greedy `generate` of `new_tokens` after the warm-up call: wall seconds of one timed call."""
        self.warmup(inp, new_tokens)
        return timeit(lambda: self(inp, new_tokens), n=1, warmup=0)

    def __call__(self, inp: dict, new_tokens: int, do_sample: bool = False):
        import torch  # lazy: only the HF side of a comparison needs torch
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=do_sample)
        if do_sample:
            kw.update(temperature=1.0, top_k=0, top_p=1.0)
        try:
            with torch.no_grad():
                out = self.hf.generate(**inp, **kw, **hf_generate_kwargs(self.impl, self.fullgraph))
        except Exception as e:  # noqa: BLE001 - a graph break under fullgraph: retry with graph breaks allowed
            if not self.fullgraph:
                raise
            log(f"HF static: fullgraph compilation failed ({type(e).__name__}: {str(e)[:200]}); fullgraph=False")
            self.fullgraph = False
            torch._dynamo.reset()
            if hasattr(self.hf, "_compiled_call"):
                del self.hf._compiled_call
            with torch.no_grad():
                out = self.hf.generate(**inp, **kw, **hf_generate_kwargs(self.impl, self.fullgraph))
        sync()
        return out


@contextlib.contextmanager
def hf_errors(res: dict, key: str, what: str):
    """Record a failing part (an HF baseline or a kernel: out of memory, a compile error) as `res[key]` and the log,
    and go on with the bench."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - out of memory, a compile error: the bench goes on
        res[key] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"{what}: {res[key]}")


def hf_prefill_seconds(hf, inp: dict, n: int = 2) -> float:
    """Seconds of one HF forward over the prompt with the LM head on the last position (generate's prefill)."""
    import torch  # lazy: only the HF side of a comparison needs torch

    def pre():
        with torch.no_grad():
            hf(**inp, logits_to_keep=1)
        sync()
    return timeit(pre, n=n, warmup=1)


def frozen_copy(hf):
    """A frozen copy of the HF model on the same device (the reference / query embedder of an HF step)."""
    import copy  # lazy: only the HF side of a comparison needs it
    e = copy.deepcopy(hf).eval()
    e.requires_grad_(False)
    return e
