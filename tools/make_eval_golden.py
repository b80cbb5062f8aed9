"""Write the evaluation golden files (tests/fixtures/eval_golden/): the toy eval path on a small synthetic corpus with
a demo policy whose LM head is rigged so that most episodes take the refine path (turn 1 -> SQR -> re-retrieval ->
turn 2). tests/test_eval_golden.py runs the same setup and compares its detail JSONL and result.json with
`tools/eval_compare.py`: decisions exactly, floats to a tolerance, near-tied rows (unstable.json) left out.

    JAX_PLATFORMS=cpu python tools/make_eval_golden.py tests/fixtures/eval_golden            # all three files
    JAX_PLATFORMS=cpu python tools/make_eval_golden.py tests/fixtures/eval_golden --unstable-only

`--unstable-only` keeps detail.jsonl and result.json and rewrites unstable.json alone: the rows whose decisions move
when every weight (the search engine's before the corpus is embedded, the policy's and the SQR head's) is scaled by
1 + 1e-6 * N(0, 1), under three seeds. The detail/result files were written by the evaluation code as it was before
the episode engine (agent/rollout.py) replaced the old agent loop (commit efb88d4, run on 28a2dcd's code).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs.toy import get_config  # noqa: E402
from tools import eval_compare  # noqa: E402
from vsr1_jax import demo_models  # noqa: E402
from vsr1_jax.agent.evaluate import EvalSettings, run_eval  # noqa: E402
from vsr1_jax.processing.special_tokens import special_ids  # noqa: E402

# The demo policy (seed 0) generates token 699 in 14 of the 16 test episodes and token 547 in 9; swapping their LM-head
# columns with <REFINE> and <|im_end|> makes those episodes refine (or stop) where they would have written them.
SWAP_WITH_REFINE, SWAP_WITH_IM_END = 699, 547
PERTURB_SCALE, PERTURB_SEEDS = 1e-6, (1, 2, 3)


def golden_config():
    c = get_config()
    # pinned, so changes of the demo's settings do not move the golden setup
    c.mode, c.data_root, c.output_dir = "eval", "data", "out"
    c.demo.zero_init_refine = False
    c.synthetic.reasoning = "full"
    c.video.eval.min_pixels = 32 * 32
    c.agent.batch_size = 16
    c.model.dtype = "float32"
    c.synthetic.train.num_videos, c.synthetic.test.num_videos = 4, 8
    c.synthetic.progress = False
    c.eval.max_new_tokens = 32
    # the world and random search engine the golden files were written with (configs/toy.py has since moved to a
    # Stage-0-trained engine on a bigger, split-disjoint world)
    c.demo.stage0.enabled = False
    c.demo.sqr_probe = False
    c.synthetic.difficulty.disjoint_splits = False
    c.synthetic.video.shape_size = 12
    c.demo.embed_video.max_frames = 64
    c.synthetic.video.max_frames = 16   # the world's 8-16 frames then (configs/toy.py now renders 8)
    return c


def rig(policy, tok):
    ids = special_ids(tok)
    W = np.array(policy.text.lm_head[...])
    for a, b in ((ids.refine, SWAP_WITH_REFINE), (ids.im_end, SWAP_WITH_IM_END)):
        W[:, [a, b]] = W[:, [b, a]]
    policy.text.lm_head[...] = W


def perturb(module, seed: int, scale: float = PERTURB_SCALE) -> None:
    """Scale every float parameter of `module` in place by 1 + scale * N(0, 1)."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    new = [x * (1 + scale * rng.standard_normal(x.shape)).astype(x.dtype)
           if np.issubdtype(np.asarray(x).dtype, np.floating) else x for x in leaves]
    nnx.update(module, jax.tree.unflatten(treedef, new))


def run_golden(out_dir: str, perturb_seed: int | None = None) -> dict:
    """Run the golden setup in a scratch folder; copy its detail JSONL and result.json into out_dir."""
    out_dir = os.path.abspath(out_dir)
    work = tempfile.mkdtemp()
    cwd = os.getcwd()
    os.chdir(work)  # relative paths: result.json's source_jsonl is "out/detail_synthetic_test.jsonl"
    try:
        c = golden_config()
        emb = demo_models.demo_embedder(c)
        if perturb_seed is not None:   # before the corpus and the stored query vectors are embedded with it
            model = nnx.merge(emb.graphdef, emb.state)
            perturb(model, perturb_seed)
            emb.graphdef, emb.state = nnx.split(model)
        demo_models.ensure_demo_data(c, emb)
        models = demo_models.demo_models(c, emb)
        if perturb_seed is not None:
            perturb(models.policy, perturb_seed + 100)
            perturb(models.head, perturb_seed + 200)
        rig(models.policy, models.tokenizer)
        summary = run_eval(EvalSettings.from_config(c), models)
        os.makedirs(out_dir, exist_ok=True)
        shutil.copy(summary["detail_jsonl"], os.path.join(out_dir, "detail.jsonl"))
        shutil.copy(summary["result_json"], os.path.join(out_dir, "result.json"))
        return summary
    finally:
        os.chdir(cwd)
        shutil.rmtree(work)


def write_unstable(out_dir: str) -> dict:
    """unstable.json: the rows of out_dir/detail.jsonl whose content moves under the weight perturbations."""
    clean = eval_compare.read_jsonl(os.path.join(out_dir, "detail.jsonl"))
    rows: set[int] = set()
    for seed in PERTURB_SEEDS:
        scratch = tempfile.mkdtemp()
        try:
            run_golden(scratch, perturb_seed=seed)
            rows |= set(eval_compare.unstable_rows(clean, eval_compare.read_jsonl(os.path.join(scratch,
                                                                                                "detail.jsonl"))))
        finally:
            shutil.rmtree(scratch)
    info = {"perturbation": f"every weight x (1 + {PERTURB_SCALE:g} * N(0,1)), seeds {list(PERTURB_SEEDS)}",
            "rows": sorted(rows), "of": len(clean)}
    with open(os.path.join(out_dir, "unstable.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--unstable-only", action="store_true", help="keep detail.jsonl/result.json, rewrite unstable.json")
    ap.add_argument("--no-unstable", action="store_true", help="write detail.jsonl and result.json only")
    a = ap.parse_args()
    if not a.unstable_only:
        run_golden(a.out_dir)
    if not a.no_unstable:
        print(json.dumps(write_unstable(a.out_dir)))
