"""Where every file of a prepared VideoSearch-R1 dataset lives (`PreparedPaths`), which step produces it, and the
errors the readers raise for a missing or malformed file (spec: eval_and_data.md §3).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from vsr1_jax.errors import UserError

# Where to point users when a file is missing: the original's download script fetches the prepared tree, the build
# mode makes it from raw videos (vsr1_jax/prepare.py), and the synthetic generator writes a complete toy tree.
BUILD_HINT = ("the original's `bash scripts/download_data.bash` fetches the prepared tree; `python -m vsr1_jax.main "
              "--config=configs/<dataset>.py --config.mode=build ...` builds it from raw videos (README 'Building the "
              "prepared data'); for a synthetic tree in this layout: `python -m vsr1_jax.main --config=configs/toy.py` "
              "(writes outputs/toy/data)")

SPLITS = ("train", "test")

# Which pipeline step writes each file, for "not found" messages. Step names are the original's
# `preprocess/scripts_<ds>/NN_*.bash` (start_from_scratch.bash L33-46; eval_and_data.md §6).
PRODUCERS = {
    "raw_annotation": "the raw-annotation step (original 01_data_generate: a verbatim copy of the VERIFIED FIG jsonl)",
    "query_embeddings": "the query-embedding step (original 02_embed_queries)",
    "query_meta": "the query-embedding step (original 02_embed_queries)",
    "segment_embeds": "the video-embedding step (original 02_embed_segments)",
    "docid2row": "the video-embedding step (original 02_embed_segments)",
    "video_embed_meta": "the video-embedding step (original 02_embed_segments)",
    "video_npy": "the frame-extraction step (original 04_extract_<split>_npy)",
    "video_npy_meta": "the frame-extraction step (original 04_extract_<split>_npy)",
    "faiss_index": "the index step (original 03_build_index)",
    "id_map": "the index step (original 03_build_index)",
    "hard_negatives": "the hard-negative step (original 08_build_hard_negatives)",
    "sft_oneturn": "the SFT-data step (original 06_convert_to_train_oneturn)",
    "sft_reasoning": "the teacher-reasoning step (original 05_generate_match_grounding)",
    "grpo_rows": "the GRPO-data step (original 09_build_verified_search_minimal_top1)",
    "grpo_stats": "the GRPO-data step (original 09_build_verified_search_minimal_top1)",
}


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
class PreparedDataError(UserError, ValueError):
    """A prepared-data file exists but its content is wrong (message names the file, and the line when known)."""


class MissingPreparedFileError(UserError, FileNotFoundError):
    """A prepared-data file is absent; the message names the file and the step that produces it."""


def _missing(path: Path, kind: str) -> MissingPreparedFileError:
    return MissingPreparedFileError(f"{path} not found: produced by {PRODUCERS[kind]}; {BUILD_HINT}")


def _require(path: Path, kind: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise _missing(path, kind)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------
def _check_split(split: str) -> str:
    if split not in ("train", "test", "val"):
        raise ValueError(f"unknown split {split!r}: expected 'train', 'test' (or 'val' for ActivityNet/DiDeMo)")
    return split


@dataclasses.dataclass(frozen=True)
class PreparedPaths:
    """Every path of `<root>/<dataset>/` (README "Prepared Data Folder Layout"; eval_and_data.md §3)."""

    root: Path
    dataset: str

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def from_dataset_dir(cls, dataset_dir: str | os.PathLike) -> "PreparedPaths":
        d = Path(dataset_dir)
        return cls(d.parent, d.name)

    @property
    def dataset_dir(self) -> Path:
        return self.root / self.dataset

    def raw_annotation(self, split: str) -> Path:
        return self.dataset_dir / "raw_annotation" / f"{_check_split(split)}.jsonl"

    def split_dir(self, split: str) -> Path:
        return self.dataset_dir / _check_split(split)

    def query_embeddings(self, split: str) -> Path:
        return self.split_dir(split) / "query_embedding" / f"query_embeddings.{split}.npy"

    def query_meta(self, split: str) -> Path:
        return self.split_dir(split) / "query_embedding" / f"query_meta.{split}.jsonl"

    def segment_embeds(self, split: str) -> Path:
        return self.split_dir(split) / "video_embedding_1fps" / "segment_embeds.npy"

    def docid2row(self, split: str) -> Path:
        return self.split_dir(split) / "video_embedding_1fps" / "docid2row.json"

    def video_embed_meta(self, split: str) -> Path:
        return self.split_dir(split) / "video_embedding_1fps" / "meta.jsonl"

    def video_npy_dir(self, split: str) -> Path:
        return self.split_dir(split) / "video_npy_with_meta"

    def video_npy(self, split: str, video_id: str) -> Path:
        return self.video_npy_dir(split) / f"{video_id}.npy"

    def video_npy_meta(self, split: str) -> Path:
        return self.video_npy_dir(split) / "meta.jsonl"

    def faiss_index(self, split: str) -> Path:
        return self.split_dir(split) / "index" / "index.faiss"

    def id_map(self, split: str) -> Path:
        return self.split_dir(split) / "index" / "id_map.json"

    @property
    def hard_negatives(self) -> Path:
        """{qid: [doc_id, ...]}: Stage 1's hard negatives (E §3.7; S §5)."""
        return self.dataset_dir / "train" / "hard_negatives.json"

    @property
    def sft_oneturn(self) -> Path:
        """Stage 1's items (convert_match_grounding_to_oneturn.py L324-344; E §3.8; S §8 "Data")."""
        return self.dataset_dir / "sft_data" / "train_oneturn.json"

    @property
    def sft_reasoning(self) -> Path:
        return self.dataset_dir / "sft_data" / "top1_reasoning_grounding.train.jsonl"

    @property
    def grpo_rows(self) -> Path:
        """Stage 2's rows (G §5)."""
        return self.dataset_dir / "grpo_data" / "train.minimal_top1.jsonl"

    @property
    def grpo_stats(self) -> Path:
        """The GRPO builder's counts (BM:162-186, BM:354-368; G §5); written by the build, not read by training."""
        return self.dataset_dir / "grpo_data" / "stats.minimal_top1.json"

    def video_npy_exists(self, split: str, video_id: str) -> bool:
        return self.video_npy(split, video_id).is_file()


__all__ = [
    "BUILD_HINT", "MissingPreparedFileError", "PRODUCERS", "PreparedDataError", "PreparedPaths", "SPLITS",
]
