"""Base config: every default is the original's value (see the per-area files `configs/_*.py` for citations).

Dataset configs (`didemo.py`, `charades.py`, `activitynet.py`) and the demo (`toy.py`) start from this one.
Override anything on the command line: `--config.eval.max_turn=3`.
"""
import ml_collections

from vsr1_jax.config_files import sibling

get_data_config = sibling(__file__, "_data").get_data_config
get_eval_config = sibling(__file__, "_eval").get_eval_config
get_synthetic_config = sibling(__file__, "_synthetic").get_synthetic_config
get_grpo_config = sibling(__file__, "_train").get_grpo_config
get_sft_config = sibling(__file__, "_train").get_sft_config
get_video_config = sibling(__file__, "_video").get_video_config


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
    # the decoder layers of single-position decode steps: "xla" or "fused" (five Pallas kernels + a merge per layer,
    # vsr1_jax/kernels/fused_decode.py; one NVIDIA GPU only, XLA elsewhere: RunOptions' decode_layer_path). "xla"
    # until the GPU measurement through the production decode (benchmarks/decode.py --decode-layer xla,fused) decides
    c.model.decode_layer_impl = "xla"
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
    # the demo's evaluations also refine the rows that accepted their video (searched, the episode unchanged), so
    # the report's SQR-only R@1 covers every wrong top-1 with <REFINE>; not in the original
    c.demo.sqr_probe = False
    c.demo.embed_video = ml_collections.ConfigDict({"total_pixels": 10 * 768 * 32 * 32, "min_pixels": 4 * 32 * 32,
                                                    "max_frames": 64})
    # Stage 0 of the demo (vsr1_jax/train/stage0.py): train the tiny search engine contrastively on train-side
    # synthetic videos before building the corpus with it. Not part of the original (whose Qwen3-VL-Embedding comes
    # trained); off here, on in configs/toy.py. The values below are the demo's, chosen on the synthetic world.
    c.demo.stage0 = ml_collections.ConfigDict()
    c.demo.stage0.enabled = False
    c.demo.stage0.dir = ""              # "" = <data_root>/<dataset>_stage0 (beside the corpus built with it)
    c.demo.stage0.seed = 0              # pool plan, batch order and query wording
    c.demo.stage0.pool_videos = 2048    # train-side videos in near-duplicate twins (no test event tuple)
    c.demo.stage0.val_videos = 256      # held-out train-side videos: R@1 during training (never the test split)
    c.demo.stage0.steps = 400
    c.demo.stage0.batch_size = 64       # 32 twins: each query's twin is its hard negative, the rest in-batch ones
    c.demo.stage0.learning_rate = 2e-3  # AdamW, linear decay after the warmup
    c.demo.stage0.warmup_steps = 20
    c.demo.stage0.weight_decay = 0.05   # on weights, not on biases and norms
    c.demo.stage0.temperature = 0.05
    c.demo.stage0.same_background_batches = True  # one background per batch (see Stage0Task.batch_rows)
    c.demo.stage0.symmetric = True      # query->video and video->query InfoNCE (False: query->video only)
    c.demo.stage0.query_length = 64     # query prompts are padded to this many tokens (one compiled step)
    c.demo.stage0.eval_every = 50       # held-out R@1 every this many steps (and at the end)
    c.demo.stage0.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 100, "every_fraction": 0.0, "keep": 2, "async_save": False})
    # Stage 0v (vsr1_jax/train/vision_pretrain.py), before Stage 0: pretrain the tiny vision tower on the world's
    # attributes (one linear head each), as the real models' vision encoder comes pretrained; the engine and the
    # policy start from it. Not part of the original; off here, on in configs/toy.py. Part of Stage 0: with
    # demo.stage0.enabled=False the demo's models are all random.
    c.demo.vision = ml_collections.ConfigDict()
    c.demo.vision.enabled = False
    c.demo.vision.seed = 0               # pool plan (another stream than Stage 0's), heads' init, batch order
    c.demo.vision.pool_videos = 1024     # train-side videos (no test event tuple)
    c.demo.vision.val_videos = 128       # held-out train-side videos: accuracy per attribute during training
    c.demo.vision.steps = 800
    c.demo.vision.batch_size = 32
    c.demo.vision.learning_rate = 3e-3   # AdamW, linear decay after the warmup
    c.demo.vision.warmup_steps = 20
    c.demo.vision.weight_decay = 0.05
    c.demo.vision.eval_every = 100
    # per-token heads too (the shape, direction and colour of the object whose centre is in a merged token's cell, and
    # whether one is): binds each attribute to its object, which the pooled heads cannot (a still distractor or a
    # second event makes "the shape of the video" ambiguous); what a policy reading tokens needs
    c.demo.vision.dense = False
    c.demo.vision.dense_weight = 1.0
    c.demo.vision.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 200, "every_fraction": 0.0, "keep": 2, "async_save": False})
    # Stage 0c (vsr1_jax/train/caption_pretrain.py), after Stage 0: the tiny policy learns to say what a video shows
    # (causal-LM loss on captions of rendered train-side videos), as the real policy comes a pretrained VLM; Stage 1
    # starts from it. Not part of the original; off here, on in configs/toy.py. Needs demo.stage0.enabled.
    c.demo.caption = ml_collections.ConfigDict()
    c.demo.caption.enabled = False
    c.demo.caption.seed = 0              # pool plan (other streams than Stages 0 and 0v's) and batch order
    c.demo.caption.pool_videos = 2048    # train-side videos (no test event tuple), rendered per batch
    c.demo.caption.val_videos = 128      # held-out train-side videos: caption loss and attribute accuracy
    c.demo.caption.steps = 400
    c.demo.caption.batch_size = 16
    c.demo.caption.learning_rate = 3e-3  # AdamW, linear decay after the warmup (Stage 1's toy rate)
    c.demo.caption.warmup_steps = 20
    c.demo.caption.weight_decay = 0.0    # Stage 1's (sft.weight_decay)
    c.demo.caption.max_tokens = 384      # every row is padded to this many tokens (one compiled step)
    c.demo.caption.max_caption_tokens = 128   # ... and its caption to this many label tokens
    c.demo.caption.eval_every = 100
    c.demo.caption.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 200, "every_fraction": 0.0, "keep": 2, "async_save": False})
    return c
