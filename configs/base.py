"""Base config: every default is the original's value (see the per-area files `configs/_*.py` for citations).

Dataset configs (`didemo.py`, `charades.py`, `activitynet.py`) and the demo (`toy.py`) start from this one.
Override anything on the command line: `--config.eval.max_turn=3`.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs._data import get_data_config  # noqa: E402
from configs._eval import get_eval_config  # noqa: E402
from configs._synthetic import get_synthetic_config  # noqa: E402
from configs._train import get_grpo_config, get_sft_config  # noqa: E402
from configs._video import get_video_config  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # what main.py runs: "eval" (the search agent + metrics + report), "sft" (Stage 1), "grpo" (Stage 2), "build"
    # (the prepared data from raw videos) or "demo" (the toy pipeline: eval, SFT, eval, GRPO, eval, side by side)
    c.mode = "eval"
    c.dataset = "charades-sta"      # folder under data_root: activitynet | charades-sta | didemo
    c.data_root = ""                # prepared data root (<data_root>/<dataset>/...); nothing is downloaded
    c.split = "test"
    c.checkpoint = ""               # converted checkpoint (python -m vsr1_jax.convert hf-to-orbax ...) or an HF folder
    c.output_dir = "outputs/eval"

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "bfloat16"      # the original runs bf16 (BF16=True, TCK); use float32 on CPU for exactness
    # multi-token attention (prefill, training forwards, the embedder): "xla" (dense, any backend), "cudnn" (fused
    # flash kernel, NVIDIA GPUs, bf16/fp16; rows right-padded, see RunOptions) or "auto" = cudnn on NVIDIA GPUs in
    # bf16/fp16, xla elsewhere
    c.model.attn_impl = "auto"
    c.model.vision_attn_impl = "auto"
    # single-position decode steps: "xla", "pallas" (flash-decoding kernel, vsr1_jax/kernels/decode_attention.py) or
    # "auto" = pallas on NVIDIA GPUs, xla elsewhere (the agent runs unsharded; see RunOptions.decode_attn_impl)
    c.model.decode_attn_impl = "auto"
    # the decode loop of every generation (evaluation, GRPO rollouts, the build's teacher): "host" dispatches one
    # jitted, donated step per token from Python; "while" runs the whole decode as one jitted lax.while_loop. Same
    # tokens; "host" is the faster on GPUs (H100, 2B, batch 1: 2.26 vs 4.00 ms/step; README "Measured figures")
    c.model.decode_loop = "host"

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    # multi-host (vsr1_jax/distributed.py; launch/ sets these through VSR1_* environment variables). Empty / -1 / 0
    # = take it from the environment; nothing set and no multi-task SLURM step = one process
    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"             # auto | off | explicit | jax (JAX's own detection: Cloud TPU, SLURM, ...)
    c.distributed.coordinator_address = ""  # host:port of process 0 ($VSR1_COORDINATOR)
    c.distributed.num_processes = 0         # ($VSR1_NUM_PROCESSES)
    c.distributed.process_id = -1           # ($VSR1_PROCESS_ID)
    c.distributed.local_device_ids = ""     # comma list of this process's GPUs ($VSR1_LOCAL_DEVICE_IDS)
    c.distributed.initialization_timeout_s = 300  # waiting for the other processes to join
    c.distributed.heartbeat_timeout_s = 100       # a process silent this long is declared dead (the job fails)

    c.eval = get_eval_config()
    c.video = get_video_config()
    c.data = get_data_config()
    c.sft = get_sft_config()
    c.grpo = get_grpo_config()
    c.synthetic = get_synthetic_config()

    c.prompts = ml_collections.ConfigDict()
    # False = transformers 4.57 / vLLM layout (what the original trained and evaluated with); True = transformers 5.x
    c.prompts.outer_vision_tokens = False

    c.agent = ml_collections.ConfigDict()
    # The original evaluates one query at a time (VLLM_MAX_NUM_SEQS=1); batching changes speed, not results
    # (greedy decoding per row is independent of the batch).
    c.agent.batch_size = 16
    c.agent.length_bucket = 64

    c.demo = ml_collections.ConfigDict()
    c.demo.enabled = False          # build the tiny models and the synthetic corpus instead of loading them
    c.demo.grpo = True              # mode "demo": run Stage 2 after Stage 1
    c.demo.policy_seed = 0
    c.demo.embedder_seed = 0
    c.demo.zero_init_refine = True
    c.demo.embed_video = ml_collections.ConfigDict({"total_pixels": 10 * 768 * 32 * 32, "min_pixels": 4 * 32 * 32,
                                                    "max_frames": 64})
    return c
