"""The data settings as typed data (issue 24 item 1), each read once at the boundary: `SFTData` (the batches,
lengths and negatives of `config.sft`) and `GRPOData` (those of `config.grpo`), which the training stages' settings
hold (train/settings.py), and `BuildSettings` (`config.data.build`, with `GRPORows`, the GRPO rows' builder), which
the raw -> prepared build takes (prepare.run_build, data/build/pipeline.py) instead of the config. The defaults and
their citations of the original are in configs/_train.py and configs/_data.py."""
from __future__ import annotations

import dataclasses

from vsr1_jax.config_files import read_section


@dataclasses.dataclass(frozen=True)
class SFTData:
    """The data fields of `config.sft` read once and checked (configs/_train.py cites each value)."""
    per_device_batch_size: int
    gradient_accumulation_steps: int
    shuffle: bool
    only_neg: bool
    model_max_length: int
    buckets: tuple[int, ...]
    negative_pool_size: int
    hard_negative_refresh_steps: int
    random_negative_seed: int
    ambiguous_negative_margin: float

    @classmethod
    def from_config(cls, config) -> "SFTData":
        out = read_section(cls, config.sft)
        if max(out.buckets) > out.model_max_length:
            raise ValueError(f"config.sft.buckets {out.buckets} go past config.sft.model_max_length "
                             f"{out.model_max_length} (the original's training length): lower the buckets")
        return out


@dataclasses.dataclass(frozen=True)
class GRPOData:
    """The data fields of `config.grpo` read once and checked (configs/_train.py cites each value)."""
    num_generations: int
    per_device_batch_size: int
    generation_batch_size: int
    num_epochs: int
    max_prompt_length: int
    max_completion_length: int
    prompt_buckets: tuple[int, ...]
    hard_negative_topk: int

    @classmethod
    def from_config(cls, config) -> "GRPOData":
        out = read_section(cls, config.grpo)
        if out.num_generations < 1 or out.generation_batch_size % out.num_generations:
            raise ValueError(f"config.grpo.generation_batch_size {out.generation_batch_size} is not a multiple "
                             f"of config.grpo.num_generations {out.num_generations}")
        return out

    @property
    def prompts_per_round(self) -> int:
        """Prompts of one generation round, of the whole job (all processes): generation_batch_size / G."""
        return self.generation_batch_size // self.num_generations

    @property
    def scoring_prompt_buckets(self) -> tuple[int, ...]:
        """The prompt lengths the scoring batch compiles for: `prompt_buckets` up to `max_prompt_length`, which is
        the last (a rolled-out prompt is never longer: the rollouts skip those)."""
        return tuple(sorted({b for b in self.prompt_buckets if b < self.max_prompt_length})) + (self.max_prompt_length,)



@dataclasses.dataclass(frozen=True)
class GRPORows:
    """`config.data.build.grpo`: the GRPO rows' builder (09_build_verified_search_minimal_top1, G §5), with the
    hard negatives per row of `config.grpo.hard_negative_topk` (what the training reads back)."""
    hard_negative_topk: int
    hard_negative_depth: int
    augment_match_to_balance: bool
    target_match_ratio: float
    augment_seed: int
    drop_missing_video_npy: bool

    @classmethod
    def from_config(cls, config) -> "GRPORows":
        return read_section(cls, {**config.data.build.grpo, "hard_negative_topk": config.grpo.hard_negative_topk})


@dataclasses.dataclass(frozen=True)
class TeacherVideo:
    """`config.data.build.teacher_video`: the teacher's video item (05_generate_match_grounding.bash L28-32)."""
    min_pixels: int
    max_pixels: int
    total_pixels: int
    max_frames: int
    fps: float


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """Every field of `config.data.build` (configs/_data.py); `dataset_name` is `config.dataset` when empty."""
    annotations: str
    dataset_name: str
    decode_workers: int
    embed_instruction: str
    embed_max_frames: int
    embed_sample_fps: float
    embedder: str
    embedder_checkpoint: str
    extract_utc: str
    hard_negative_max: int
    hard_negative_topk_pool: int
    metrics_topk: tuple[int, ...]
    npy_unknown_frame_count: str
    npy_workers: int
    overwrite: bool
    progress: bool
    query_chunk: int
    query_embed_batch_size: int
    query_shuffle_seed: int
    raw_videos: str
    segment_embed_batch_size: int
    sft_balance_binary: bool
    sft_balance_seed: int
    sft_exclude_finish_reasons: tuple[str, ...]
    steps: str
    teacher: str
    teacher_batch_size: int
    teacher_checkpoint: str
    teacher_chunk: int
    teacher_max_model_len: int
    teacher_max_new_tokens: int
    teacher_seed: int
    teacher_temperature: float
    teacher_top_p: float
    teacher_video: TeacherVideo
    test_annotation: str
    top1_pool_match: int
    top1_pool_not_match: int
    top1_pool_seed: int
    train_annotation: str
    video_chunk: int
    video_extensions: tuple[str, ...]
    video_fps: float
    video_max_frames: int
    video_max_pixels: int
    video_min_pixels: int

    @classmethod
    def from_config(cls, config) -> "BuildSettings":
        out = read_section(cls, config.data.build)
        return dataclasses.replace(out, dataset_name=out.dataset_name or str(config.dataset))
