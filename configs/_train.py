"""Training defaults of the original VideoSearch-R1, Stage 1 (SFT) and Stage 2 (GRPO), each citing its spec line.
Each stage's batches, lengths, buckets and negatives are in its own section here (`config.sft`, `config.grpo`);
configs/_data.py has the prepared layout's loader and the offline builders.
Spec pages (shared/spec/): S = sqr_and_sft.md, G = grpo.md."""
from __future__ import annotations

import ml_collections


def _checkpointing(every_fraction: float, every_steps: int, keep: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every_fraction = every_fraction  # save every this fraction of the total steps (0 = use every_steps)
    c.every_steps = every_steps
    c.keep = keep                      # newest checkpoints kept
    c.async_save = True
    return c


def get_sft_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # --- the data of Stage 1: batches, lengths, negatives. The files read are the prepared layout's (E §3):
    # sft_data/train_oneturn.json (E §3.8) and train/hard_negatives.json (E §3.7), named once in
    # vsr1_jax/data/paths.py (PreparedPaths), where the build writes them.
    c.per_device_batch_size = 1       # VS L52-54 (S §8)
    c.gradient_accumulation_steps = 1  # VS L52-54 (S §8)
    c.shuffle = True                  # HF Trainer's default random sampler, seeded by seed 42 (S §8)
    c.only_neg = False                # matched and not-matched items; True = only the "neg" ones (VS L126-129; S §8)
    # collator truncation in training (VS L44; S §6.2). The port pads to `buckets` and a longer row is an error, not
    # cut (no item of the original's data comes near: ~7k tokens); the buckets must stay within this length (checked)
    c.model_max_length = 46384
    # Bucketed padding: few compiled shapes; the last bucket is the original max length (S §6.2). A 64-frame
    # 384×512 video is ~6.1k visual tokens, total ~7k (S §2.4 shape trace).
    c.buckets = (2048, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 46384)
    c.negative_pool_size = 24         # InfoNCE K = 24 negatives (VS L118; S §5)
    c.hard_negative_refresh_steps = 1  # online refresh every step (VS L141; S §5)
    c.random_negative_seed = 42       # random fill of the negative pool, random.Random(42) (TRN L1036-1057; S §5)
    c.ambiguous_negative_margin = 0.0005  # drop n if cos(q,n) ≥ cos(q,pos) − 0.0005 (VS L119-120; S §5)
    c.learning_rate = 2e-5            # backbone (VS L56-65; S §8)
    c.refine_learning_rate = 5e-5     # refine modules: projector_lr (VS L122; S §8)
    c.warmup_steps = 0                # linear decay, warmup 0 (VS L57-59)
    c.adam_beta1 = 0.9
    c.adam_beta2 = 0.999
    c.adam_epsilon = 1e-8
    c.weight_decay = 0.0
    c.max_grad_norm = 1.0
    c.num_epochs = 1                  # VS L55
    c.max_steps = 0                   # > 0: stop after this many optimizer steps (0 = the epochs decide)
    c.seed = 42                       # VS (S §8)
    # Parameters in bf16 as the original loads them (torch_dtype=bfloat16, bf16=True; S §8); the refine modules
    # are created after loading, so they stay float32. float32 here = fp32 master weights for the backbone too.
    c.param_dtype = "bfloat16"
    # activation rematerialisation of the decoder scan body: "none" | "full" | "dots" (save matmul outputs only)
    c.remat = "dots"
    # the SQR rollout's layer loop in the step (port choice, RunOptions.rollout_layers): "rolled" = one compiled
    # layer body (each of the 7 steps copies every layer's weights out of the stacked weights on GPUs); "unrolled" =
    # static slices read in place, a longer compile
    c.rollout_layers = "rolled"
    c.retrieval_loss_weight = 0.3     # lambda (VS L116; S §5)
    c.retrieval_temperature = 0.1     # tau (VS L117; S §5)
    c.filter_ambiguous_negatives = True  # retrieval_ignore_ambiguous_negatives (VS L119; S §5)
    c.refine_token_count = 8          # rollout depth (VS; S §2.3)
    c.label_buckets = (256, 512, 1024, 2048)  # assistant-token counts the LM loss is computed over (padded)
    # videos are padded to these temporal groups (2 frames each; 64 frames = 32) and patches per frame (a
    # 200,704-pixel frame is at most 784 patches of 16 x 16): the step compiles once per bucket combination
    c.vision_group_buckets = (4, 8, 16, 32)
    c.vision_patch_buckets = (256, 512, 784)
    c.logprob_chunk = 256             # LM-head chunk (positions) of the loss
    c.checkpoint = _checkpointing(0.05, 0, 10)  # every 5 % of steps, keep 10 (VS L75-78; S §8)
    c.log_every = 1
    c.export_hf = True                # write the final policy as a released-layout HF folder
    return c


def get_grpo_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.init_checkpoint = ""            # the Stage-1 model (orbax, HF or <run>/checkpoints/<step>); "" = checkpoint
    # --- the data of Stage 2: the rows are grpo_data/train.minimal_top1.jsonl, beside the builder's
    # stats.minimal_top1.json (G §5), named once in vsr1_jax/data/paths.py (PreparedPaths). Each prompt is sampled
    # num_generations times in a row (the engine's `group`): the RepeatSampler's mini_repeat_count = G
    # (TR:1284-1318; G §3.1).
    c.num_generations = 8             # G = 8 (S2:256, S2:395; G §3.1)
    c.per_device_batch_size = 2       # completions per micro-batch (S2:250; G §3.1)
    # Completions per generation round = PDTBS · NPROC · steps_per_generation; on 1 GPU spg is raised to 4, so
    # 2 · 1 · 4 = 8 = 1 prompt × G (S2:332-341; G §3.1 "→ 1 GPU"). The pipeline's batch_size is this number.
    c.generation_batch_size = 8
    c.num_epochs = 1                  # S2:252 (G §3.1)
    # S2:254 (G §3.1). The original only sizes vLLM's max_model_len = 4096 + 768 with it (a longer prompt gets a
    # shorter completion, one over 4864 tokens fails the run: TR:1162-1166); the port's rollouts skip a prompt
    # longer than this (the round goes on without its group, counted as `prompt_too_long`), and the scoring pads
    # prompts to `prompt_buckets`, with this length as the last bucket
    c.max_prompt_length = 4096
    c.max_completion_length = 768     # S2:255 (G §3.1)
    c.prompt_buckets = (1024, 2048, 3072, 4096)  # compiled prompt lengths; max_prompt_length is added if larger
    # HARD_NEGATIVE_TOPK (S2:102; G §4): the hard negatives each row carries (the build writes this many, the
    # refine-quality reward reads them)
    c.hard_negative_topk = 24
    c.learning_rate = 5e-7            # S2:251 (G §3.4), constant
    c.adam_beta1 = 0.9
    c.adam_beta2 = 0.999
    c.adam_epsilon = 1e-8
    c.weight_decay = 0.01             # S2:262 (no decay on biases and norms, HF default)
    c.max_grad_norm = 1.0             # S2:260
    c.param_dtype = "bfloat16"        # bf16 weights (S2:259)
    c.remat = "dots"
    c.temperature = 1.0               # AR:218; logits are divided by it for scoring too
    c.beta = 0.01                     # k3 KL weight (S2:397)
    c.epsilon_low = 0.2               # AR:214-217
    c.epsilon_high = 0.2
    c.num_iterations = 1              # mu (AR:208-213): > 1 reuses a generation with stored old log-probs
    c.steps_per_generation = 4        # 1 GPU: PDTBS 2 x spg 4 = 8 = 1 prompt x G (S2:332-341; G §3.1)
    c.loss_type = "grpo"              # "grpo": mean over each sequence's tokens, then over the batch (AR:523);
    #   "bnpo": the original's token mean: each per-device micro-batch's token mean, averaged over the accumulation
    #   steps and devices (TR:5669-5672); "token_mean" (not the original's): one mean over every completion token of
    #   the generation batch, independent of the micro-batching (differs from "bnpo" when micro-batches' token counts
    #   differ)
    c.refine_token_count = 8          # the rollouts' latent rollout depth: REFINE_ROLLOUT_DEPTH=8 (S2:33-34; G §2.2)
    c.max_turns = 1                   # 1 = what the original trains; > 1 = the paper's full agent loop (option)
    c.rollout_batch_size = 8          # rows generated together
    # sampling keys of the rollouts: "batch" = one key per generation batch (a counter folded in; several processes
    # also fold in their index); "prompt" = one key per prompt from its place in the round, so a sample's tokens do
    # not depend on the batching or on the number of processes (a multi-host run equals a one-process run)
    c.rollout_keys = "batch"
    # the GRPO pixel budget (S2:243-248) caps a frame at 65,536 px = 256 patches of 16 x 16; 64 frames = 32 groups
    c.vision_group_buckets = (4, 8, 16, 32)
    c.vision_patch_buckets = (64, 128, 256)
    c.max_steps = 0                   # > 0: stop after this many optimizer steps
    c.seed = 42
    c.logprob_chunk = 256
    # rewards (G §4): weights in the original's order; dataset configs override them
    c.rewards = ml_collections.ConfigDict()
    c.rewards.answer = 1.6            # W_ACC
    c.rewards.think = 0.05            # W_THINK_REWARD
    c.rewards.time_format = 0.05      # W_TIME_FMT
    c.rewards.time_iou = 0.35         # W_TIME_IOU
    c.rewards.refine = 0.8            # W_FMT (refine presence)
    c.rewards.refine_quality = 0.5    # W_MARGIN
    c.rewards.no_refine_penalty = 0.0  # GRPO_NO_REFINE_QUALITY_PENALTY
    c.rewards.quality_temperature = 0.1  # GRPO_QUERY_REFINE_TEMPERATURE
    c.rewards.quality = "delta"       # "delta" = p_after - p_before (shipped); "p_after"; "margin"
    c.rewards.margin_scale = 1.0      # MARGIN_SCALE (the margin variant only)
    c.checkpoint = _checkpointing(0.0, 200, 2)  # every 200 steps, keep 2 (S2:356, S2:402)
    c.export_hf = True
    c.log_every = 1
    return c
