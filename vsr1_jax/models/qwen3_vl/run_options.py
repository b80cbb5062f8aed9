"""`RunOptions`: how the model computes (not what): activation dtype, attention kernels, rematerialisation, the
decode loop; and the one padding rule the fused attention kernel imposes on its callers.

The padding rule (stated here only; every caller goes through `RunOptions.padding` / `RunOptions.check_rows`):
with `attn_impl="cudnn"` (the fused causal kernel, which takes per-row lengths instead of a mask) a multi-token call
must have right-padded (or unpadded) rows written from cache slot 0, so the sampler packs prompts right-padded and
SFT, GRPO scoring and the embedder build right-padded batches. `attn_impl="xla"` (dense masked attention) takes any
padding at any cache slot; HF `generate`'s left padding is the sampler's layout there.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

ATTN_IMPLS = ("xla", "cudnn")
DECODE_ATTN_IMPLS = ("xla", "pallas")
DECODE_LAYER_IMPLS = ("xla", "fused", "fused_interpret")
ROLLOUT_LAYERS = ("rolled", "unrolled")


def fused_attention(attn_impl: str) -> bool:
    """Whether multi-token calls run the fused cudnn kernel (and so must follow the padding rule above)."""
    return attn_impl == "cudnn"


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to compute (not what): dtypes, attention kernel, rematerialisation."""
    dtype: str = "float32"          # activation / compute dtype ("bfloat16" on accelerators)
    # "xla" (einsum, any backend, any padding) or "cudnn" (fused causal flash kernel, GPU bf16/fp16; multi-token
    # calls then follow the padding rule: `padding`, `check_rows`); single-position decode steps use
    # `decode_attn_impl`.
    attn_impl: str = "xla"
    vision_attn_impl: str = "xla"
    # single-position steps with a cache: "xla" (`text.cached_attention`) or "pallas" (GPU flash-decoding kernel,
    # vsr1_jax.kernels.decode_attention: reads the stacked cache in place). "pallas" is for unsharded models: under
    # a mesh, XLA cannot split the kernel and would gather the whole cache onto each device. Off GPUs it runs
    # through the Pallas interpreter (correct, slow: for tests).
    decode_attn_impl: str = "xla"
    # the decoder layers of single-position steps: "xla" (`text.decoder_layer`: ~18 XLA kernels per layer) or
    # "fused" (five Pallas kernels + one XLA fusion per layer, vsr1_jax/kernels/fused_decode.py, issue 25 item 1)
    # where `decode_layer_path` allows it (one NVIDIA GPU, unrolled decode steps; XLA elsewhere). "fused_interpret": the
    # same kernels through the Pallas interpreter on any backend (tests: correct, slow).
    decode_layer_impl: str = "xla"
    remat: str = "none"             # "none" | "full" | "dots" (decoder layers)
    # single-position steps with a cache unroll the layer loop (inference speed); training differentiates through
    # the SQR rollout's 7 steps, where an unrolled loop multiplies compile time: it keeps the scan rolled
    unroll_decode: bool = True
    # the layer loop of those differentiated single-position steps (the SQR rollout in training, the cache travelling
    # per layer: `text.CacheMode.SLICED`): "rolled" (one compiled layer body; on GPUs every step copies each layer's
    # weights out of the stacked weights, issue 25 item 3) or "unrolled" (each layer's weights a static slice, read
    # in place; the step compiles the rollout's 7 x L layer bodies)
    rollout_layers: str = "rolled"
    # the generation loop (`generate.sampler.Sampler`): "host" (one jitted, donated step per token dispatched from
    # Python; the production default, fastest on GPUs) or "while" (the whole decode as one jitted lax.while_loop)
    decode_loop: str = "host"

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype)

    # ---- the padding rule -------------------------------------------------------------------------------------
    @property
    def padding(self) -> str:
        """The side multi-token rows are padded on: "right" under the fused kernel (per-row lengths, no left
        padding), else "left" (HF `generate`'s layout)."""
        return "right" if fused_attention(self.attn_impl) else "left"

    def check_rows(self, mask, *, start: int = 0) -> None:
        """Raise ValueError when a multi-token call of rows `mask` [B, T] (1 = token) written from cache slot `start`
        breaks the padding rule (fused kernel only; single positions and "xla" take anything)."""
        if not fused_attention(self.attn_impl) or mask.shape[-1] <= 1:
            return
        if start > 0:
            raise ValueError("attn_impl='cudnn' runs multi-position calls from cache slot 0 only (prefill); extend "
                             "a cache by several positions with attn_impl='xla'")
        if np.any(np.diff(np.asarray(mask).astype(np.int32), axis=-1) > 0):
            raise ValueError("attn_impl='cudnn' takes right-padded (or unpadded) rows: pack prompts with "
                             "pack_prompts(..., padding=opts.padding)")

    @classmethod
    def from_config(cls, model_cfg, **overrides) -> "RunOptions":
        """From a config's `model` section (configs/base.py). "auto": decode_attn_impl = the Pallas kernel on NVIDIA
        GPUs; attn_impl / vision_attn_impl = the fused cudnn kernel on NVIDIA GPUs in bfloat16/float16 (every
        multi-token caller follows the padding rule: the sampler's `padding`, SFT, GRPO scoring, the embedder); XLA
        elsewhere."""
        dev = jax.devices()[0]
        nvidia = dev.platform == "gpu" and "NVIDIA" in dev.device_kind
        fused = nvidia and model_cfg.dtype in ("bfloat16", "float16")
        auto = lambda v, on: (on if v == "auto" else v)  # noqa: E731
        kw = dict(dtype=model_cfg.dtype, attn_impl=auto(model_cfg.attn_impl, "cudnn" if fused else "xla"),
                  vision_attn_impl=auto(model_cfg.vision_attn_impl, "cudnn" if fused else "xla"),
                  decode_attn_impl=auto(model_cfg.decode_attn_impl, "pallas" if nvidia else "xla"),
                  decode_layer_impl=model_cfg.get("decode_layer_impl", "xla"),
                  remat=model_cfg.get("remat", "none"), decode_loop=model_cfg.decode_loop)
        kw.update(overrides)
        return cls(**kw)


def decode_layer_path(impl: str, cfg, *, T: int, stacked_cache: bool, devices: int | None = None) -> tuple[str, str]:
    """Where the fused decode layer runs: the rule, stated here only (`TextModel.__call__` asks it on every call;
    benchmarks/decode.py to say what it timed). cfg: the TextConfig; T: new positions of the call; stacked_cache: the
    call carries the stacked cache (`text.CacheMode.STACKED`); devices: the size of the caller's mesh (None = every
    device of this process: the conservative default).

    Returns (path, why): path "fused" (the Pallas kernels lowered through Triton), "interpret" (the same kernels
    through the Pallas interpreter) or "xla" (`text.decoder_layer` in the layer scan); why: the reason the XLA layer
    runs although `impl` asked for the fused one ("" otherwise). The fused layer runs only when all of these hold:
      * impl is "fused" or "fused_interpret";
      * a single-position step with the stacked cache (T == 1, the unrolled inference decode): prefill and
        multi-position extends are GEMM-sized, and the rolled single-position steps of training (the SQR rollout,
        `unroll_decode=False`) are differentiated, which the kernels (no VJP) cannot be;
      * one device: under a mesh of several, XLA cannot split the kernels and would gather the weights and the
        cache onto each device;
      * "fused": an NVIDIA GPU (Triton; TPUs and CPUs keep XLA) and dims Triton's blocks take (head_dim a power of
        two >= 32: half-head dots of >= 16 columns; hidden and intermediate sizes multiples of 16).
        "fused_interpret" runs on any backend at any of these dims (tests)."""
    if impl not in DECODE_LAYER_IMPLS:
        raise ValueError(f"decode_layer_impl={impl!r}: expected one of {DECODE_LAYER_IMPLS}")
    if impl == "xla":
        return "xla", ""
    if T != 1 or not stacked_cache:
        return "xla", f"not a single-position step with the stacked cache (T={T})"
    n = jax.device_count() if devices is None else devices
    if n != 1:
        return "xla", f"{n} devices (the fused layer runs on one)"
    if impl == "fused_interpret":
        return "interpret", ""
    dev = jax.devices()[0]
    if not (dev.platform == "gpu" and "NVIDIA" in dev.device_kind):
        return "xla", f"not an NVIDIA GPU ({dev.platform}: {dev.device_kind})"
    hd = cfg.head_dim
    if hd < 32 or hd & (hd - 1) or cfg.hidden_size % 16 or cfg.intermediate_size % 16:
        return "xla", (f"dims Triton's blocks do not take (head_dim {hd}: a power of two >= 32; hidden "
                       f"{cfg.hidden_size}, intermediate {cfg.intermediate_size}: multiples of 16)")
    return "fused", ""
