"""The training stages' settings as typed data (issue 24 item 1): `SFTSettings.from_config(config)` and
`GRPOSettings.from_config(config)` read every field their stage uses from the ml_collections config once, check
the ones that must hold supported values, and hand frozen dataclasses to the runners (train/sft_run.py,
train/grpo_run.py), which never read the config themselves. The defaults and their spec citations stay in
configs/ (_data.py, _train.py, _video.py, _eval.py); tests/test_config_leaves.py shows each leaf is read here.
The run folder's config.json (the whole resolved config, which evaluation reads back to find a training
checkpoint's base model) is not a setting: the stage's entry passes it to the runner as `record`.
"""
from __future__ import annotations

import dataclasses

from vsr1_jax.agent.rollout import EpisodeConfig
from vsr1_jax.config_files import Checkpointing, Loader, PixelBudget, Prepared, read_section
from vsr1_jax.data.settings import GRPOData, SFTData
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.train import grpo, sft
from vsr1_jax.train.rewards import RewardWeights


@dataclasses.dataclass(frozen=True)
class AdamW:
    """The optimizer fields of `config.sft` / `config.grpo` (train/optim.py builds the optax chain)."""
    learning_rate: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    weight_decay: float
    max_grad_norm: float
    refine_learning_rate: float | None = None   # SFT's refine modules (projector_lr)
    warmup_steps: int = 0


def _adamw(section, *, sft_groups: bool) -> AdamW:
    extra = dict(refine_learning_rate=float(section.refine_learning_rate),
                 warmup_steps=int(section.warmup_steps)) if sft_groups else {}
    return AdamW(learning_rate=float(section.learning_rate), adam_beta1=float(section.adam_beta1),
                 adam_beta2=float(section.adam_beta2), adam_epsilon=float(section.adam_epsilon),
                 weight_decay=float(section.weight_decay), max_grad_norm=float(section.max_grad_norm), **extra)


def _common(config, stage: str) -> dict:
    """The fields both stages read the same way: where the data is, the loader, the run outputs, the mesh."""
    return dict(prepared=Prepared(str(config.data_root), str(config.dataset), str(config.data.train_split)),
                loader=read_section(Loader, config.data.loader),
                video=read_section(PixelBudget, config.video[stage]),
                checkpoint=read_section(Checkpointing, config[stage].checkpoint),
                log_every=int(config[stage].log_every), export_hf=bool(config[stage].export_hf),
                output_dir=str(config.output_dir), mesh=config.mesh.to_dict())


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """What both training stages read the same way (`_common`): where the data is, the loader, the stage's pixel
    budget (`config.video.<stage>`), checkpointing and logging (`config.<stage>`), the outputs and the mesh."""
    prepared: Prepared
    loader: Loader
    video: PixelBudget
    checkpoint: Checkpointing
    log_every: int
    export_hf: bool
    output_dir: str
    mesh: dict


@dataclasses.dataclass(frozen=True)
class SFTSettings(StageSettings):
    """Everything Stage 1 (train/sft_run.py) reads, from `config.sft`, `config.video.sft` and the
    query-embedder / prompt fields of `config.eval` / `config.prompts` / `config.video`."""
    data: SFTData
    timestamps_mode: str
    outer_vision_tokens: bool
    refine_token: str
    embedder_instruction: str
    embedder_max_length: int
    filter_ambiguous_negatives: bool
    label_buckets: tuple[int, ...]
    vision_group_buckets: tuple[int, ...]
    vision_patch_buckets: tuple[int, ...]
    seed: int
    num_epochs: int
    max_steps: int
    param_dtype: str
    run: RunOptions
    optimizer: AdamW
    loss: sft.LossConfig

    @classmethod
    def from_config(cls, config) -> "SFTSettings":
        s, d = config.sft, SFTData.from_config(config)
        return cls(**_common(config, "sft"), data=d, timestamps_mode=str(config.video.timestamps_mode),
                   outer_vision_tokens=bool(config.prompts.outer_vision_tokens),
                   refine_token=str(config.eval.refine_token),
                   embedder_instruction=str(config.eval.query_embedder_input_prefix),
                   embedder_max_length=int(config.eval.query_embedder_max_length),
                   filter_ambiguous_negatives=bool(s.filter_ambiguous_negatives),
                   label_buckets=tuple(int(x) for x in s.label_buckets),
                   vision_group_buckets=tuple(int(x) for x in s.vision_group_buckets),
                   vision_patch_buckets=tuple(int(x) for x in s.vision_patch_buckets),
                   seed=int(s.seed), num_epochs=int(s.num_epochs), max_steps=int(s.max_steps),
                   param_dtype=str(s.param_dtype),
                   run=RunOptions.from_config(config.model, remat=s.remat, rollout_layers=s.rollout_layers),
                   optimizer=_adamw(s, sft_groups=True),
                   loss=sft.LossConfig(retrieval_loss_weight=float(s.retrieval_loss_weight),
                                       temperature=float(s.retrieval_temperature),
                                       num_latents=int(s.refine_token_count), group_size=d.per_device_batch_size,
                                       logprob_chunk=int(s.logprob_chunk)))


ROLLOUT_KEYS = ("batch", "prompt")


@dataclasses.dataclass(frozen=True)
class GRPOSettings(StageSettings):
    """Everything Stage 2 (train/grpo_run.py) reads, from `config.grpo`, `config.video.grpo`,
    the rollouts' episode settings (`EpisodeConfig.from_config(config, "grpo")`) and, for max_turns > 1, the
    retrieval engine of `config.eval.retrieval`."""
    data: GRPOData
    init_checkpoint: str
    seed: int
    num_iterations: int
    max_steps: int
    steps_per_generation: int
    max_turns: int
    param_dtype: str
    temperature: float
    loss_type: str
    rollout_keys: str
    vision_group_buckets: tuple[int, ...]
    vision_patch_buckets: tuple[int, ...]
    retrieval_engine: str
    episode: EpisodeConfig
    rollout_run: RunOptions         # the rollouts (inference options)
    run: RunOptions                 # scoring and the update (with the stage's remat)
    optimizer: AdamW
    rewards: RewardWeights
    loss: grpo.LossConfig

    @classmethod
    def from_config(cls, config) -> "GRPOSettings":
        g = config.grpo
        if g.loss_type not in grpo.LOSS_TYPES:
            raise ValueError(f"config.grpo.loss_type={g.loss_type!r}: expected one of {grpo.LOSS_TYPES}")
        if g.rollout_keys not in ROLLOUT_KEYS:
            raise ValueError(f"config.grpo.rollout_keys={g.rollout_keys!r}: expected one of {ROLLOUT_KEYS}")
        mu = int(g.num_iterations)
        return cls(**_common(config, "grpo"), data=GRPOData.from_config(config),
                   init_checkpoint=str(g.init_checkpoint), seed=int(g.seed), num_iterations=mu,
                   max_steps=int(g.max_steps), steps_per_generation=int(g.steps_per_generation),
                   max_turns=int(g.max_turns), param_dtype=str(g.param_dtype), temperature=float(g.temperature),
                   loss_type=str(g.loss_type), rollout_keys=str(g.rollout_keys),
                   vision_group_buckets=tuple(int(x) for x in g.vision_group_buckets),
                   vision_patch_buckets=tuple(int(x) for x in g.vision_patch_buckets),
                   retrieval_engine=str(config.eval.retrieval.engine),
                   episode=EpisodeConfig.from_config(config, "grpo"),
                   rollout_run=RunOptions.from_config(config.model),
                   run=RunOptions.from_config(config.model, remat=g.remat),
                   optimizer=_adamw(g, sft_groups=False), rewards=RewardWeights.from_config(g.rewards),
                   loss=grpo.LossConfig(epsilon_low=float(g.epsilon_low), epsilon_high=float(g.epsilon_high),
                                        beta=float(g.beta), temperature=float(g.temperature),
                                        logprob_chunk=int(g.logprob_chunk), use_old_logprobs=mu > 1))

