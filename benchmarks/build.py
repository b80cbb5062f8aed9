"""The data build's per-video cost on this machine: PyAV decode (npy frames + search-engine frames, in threads as
the build runs them) and the Qwen3-VL-Embedding-2B forward through `TextVideoEmbedder.embed_videos` (random weights,
bf16, the production options), plus the query-embedding rate (`TextVideoEmbedder.embed_texts`).

    python -m benchmarks.build [--videos 4] [--seconds 120] [--batch 8]
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import time

import numpy as np
from flax import nnx

from benchmarks import common as C
from vsr1_jax.data.build import frames as FR
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.retrieval.encoder import TextVideoEmbedder


def bench_build(report, videos=4, seconds=120, fps=30, width=640, height=360, batch=8, queries=256, workers=8,
                reps=2, preset="qwen3_vl_embedding_2b"):
    """Per-video seconds of the build's two costly steps on this machine: decoding (npy frames at 1 fps <= 64,
    resized to <= 200704 px, and the search engine's <= 64 frames at full size; `workers` threads as the build
    runs them) and embedding a batch of `batch` videos with Qwen3-VL-Embedding-2B (random weights, bf16), plus
    queries/s of the text embedding. Videos are synthetic (mpeg4, moving squares) of the given size and length; the
    tiny tokenizer stands in for Qwen's (only the few text tokens differ, so the cost is the same)."""
    folder = tempfile.mkdtemp(prefix="bench_build_")
    paths = []
    t0 = time.perf_counter()
    for k in range(videos):
        def frames(k=k):
            for i in range(seconds * fps):
                f = np.empty((height, width, 3), np.uint8)
                f[:] = np.asarray([40 * k % 255, 90, 160], np.uint8)
                x = (i * 4) % (width - 32)
                f[40:72, x:x + 32] = 255
                yield f
        paths.append(FR.write_test_video(os.path.join(folder, f"v{k}.mp4"), frames(), fps=fps))
    C.log(f"build: wrote {videos} videos of {seconds} s at {fps} fps, {width}x{height} "
        f"in {time.perf_counter() - t0:.1f} s")
    dur = float(seconds)

    def npy(p):
        return FR.extract_npy_frames(p, extract_utc="bench")

    def emb(p):
        return FR.embedder_frames(p, duration=dur)

    t = time.perf_counter()
    npys = [npy(p) for p in paths]
    t_npy = (time.perf_counter() - t) / videos
    t = time.perf_counter()
    embs = [emb(p)[0] for p in paths]
    t_emb_dec = (time.perf_counter() - t) / videos
    with ThreadPoolExecutor(max_workers=workers) as pool:
        t = time.perf_counter()
        list(pool.map(npy, paths))
        list(pool.map(emb, paths))
        t_dec_par = (time.perf_counter() - t) / videos
    npy_bytes = int(npys[0][0].nbytes)
    C.log(f"build: decode per video npy {t_npy:.2f} s + embed frames {t_emb_dec:.2f} s (serial); "
        f"{t_dec_par:.2f} s with {workers} threads; npy {npys[0][0].shape} = {npy_bytes / 1e6:.1f} MB")
    part = {"videos": videos, "seconds": seconds, "fps": fps, "size": [width, height], "workers": workers,
            "decode_npy_s_per_video": t_npy, "decode_embed_frames_s_per_video": t_emb_dec,
            "decode_parallel_s_per_video": t_dec_par, "npy_shape": list(npys[0][0].shape), "npy_bytes": npy_bytes}
    report.update(**part)
    report.save()

    base = get_preset(preset)
    tok = build_tiny_tokenizer()
    cfg = C.tiny_token_config(base)
    t = time.perf_counter()
    model = Qwen3VL(cfg, rngs=nnx.Rngs(0))
    # the build's embedder options on this platform (prepare.make_embedder): fused attention on GPUs, where dense
    # attention over a batch of 8 ~7k-token video prompts needs ~70 GB
    opts = C.bench_opts()
    embedder = TextVideoEmbedder(model, tok, opts=opts, max_length=1 << 20, prep_workers=workers)
    C.log(f"build: random {preset} in {time.perf_counter() - t:.1f} s")
    vids = [embs[i % videos] for i in range(batch)]
    t = time.perf_counter()
    grid = embedder.video_inputs(vids[0])[1]
    t_prep = time.perf_counter() - t
    t = time.perf_counter()
    embedder.prepare_videos(vids)   # what embed_videos runs: pixels in prep_workers threads, prompts here
    t_prep_par = (time.perf_counter() - t) / len(vids)
    C.log(f"build: embedder input preparation (resize, patchify, prompt) {t_prep:.2f} s per video on the host, "
        f"{t_prep_par:.2f} s with {workers} threads")
    part.update(embed_host_prep_s_per_video=t_prep, embed_host_prep_parallel_s_per_video=t_prep_par)
    t = time.perf_counter()
    embedder.embed_videos(vids[:1], batch_size=1)
    C.log(f"build: first embedding of one video (compile + run) {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    embedder.embed_videos(vids[:1], batch_size=1)
    part["embed_s_per_video_batch1"] = time.perf_counter() - t
    C.log(f"build: one video embedded in {part['embed_s_per_video_batch1']:.2f} s (batch 1, host preparation included)")
    report.update(**part)
    report.save()
    t = time.perf_counter()
    embedder.embed_videos(vids, batch_size=batch)
    t_first = time.perf_counter() - t
    C.log(f"build: first embedding batch (compile + run) {t_first:.1f} s")
    t_batch = C.timeit(lambda: embedder.embed_videos(vids, batch_size=batch), n=reps, warmup=0)
    embed_s = t_batch / batch
    C.log(f"build: embed {embed_s:.3f} s per video (batch {batch})")
    part.update(batch=batch, embed_first_call_s=t_first, embed_s_per_video=embed_s)
    report.update(**part)
    report.save()
    texts = [f"a person in a red shirt picks up the {i}th box and walks to the door" for i in range(queries)]
    embedder.embed_texts(texts[:32], batch_size=32)
    t_txt = C.timeit(lambda: embedder.embed_texts(texts, batch_size=32), n=reps, warmup=0)
    per_video = t_dec_par + embed_s
    res = {"embedder_preset": preset, **part, "embed_frames": int(embs[0].shape[0]),
           "embed_grid_thw": list(grid.grid_thw), "embed_video_tokens": int(grid.num_tokens),
           "embed_queries_per_s": queries / t_txt, "decode_plus_embed_s_per_video": per_video,
           "videos_per_hour_serial": 3600.0 / per_video,
           "videos_per_hour_overlapped": 3600.0 / max(t_dec_par, embed_s)}
    C.log(f"build: embed {embed_s:.3f} s per video (batch {batch}, first call {t_first:.1f} s), "
        f"{queries / t_txt:.0f} queries/s; decode + embed {per_video:.2f} s per video")
    return res


def main(argv=None):
    ap = C.parser(__doc__, preset="qwen3_vl_embedding_2b")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", type=C.int_list, default=(640, 360), help="WIDTH,HEIGHT of the synthetic videos")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)

    def run(args, report):
        report.code(FR.extract_npy_frames, FR.embedder_frames, TextVideoEmbedder.prepare_videos,
                    TextVideoEmbedder.embed_videos, TextVideoEmbedder.embed_texts)
        report.update(**bench_build(report, videos=args.videos, seconds=args.seconds, fps=args.fps,
                                    width=args.size[0], height=args.size[1], batch=args.batch, queries=args.queries,
                                    workers=args.workers, reps=args.reps, preset=args.preset))
    return C.bench_main("build", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
