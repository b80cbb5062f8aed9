"""Write the evaluation golden files (tests/fixtures/eval_golden/): the toy eval path on a small synthetic corpus with
a demo policy whose LM head is rigged so that most episodes take the refine path (turn 1 -> SQR -> re-retrieval ->
turn 2). tests/test_eval_golden.py runs the same setup and compares its detail JSONL and result.json byte for byte.

    JAX_PLATFORMS=cpu python tools/make_eval_golden.py tests/fixtures/eval_golden

The fixture was written by the evaluation code as it was before the episode engine (agent/rollout.py) replaced the
old agent loop (commit efb88d4, run on 28a2dcd's code); the test checks that today's code still writes it.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from configs.toy import get_config  # noqa: E402
from vsr1_jax import loading  # noqa: E402
from vsr1_jax.agent.evaluate import run_eval  # noqa: E402
from vsr1_jax.processing.special_tokens import special_ids  # noqa: E402

# The demo policy (seed 0) generates token 699 in 14 of the 16 test episodes and token 547 in 9; swapping their LM-head
# columns with <REFINE> and <|im_end|> makes those episodes refine (or stop) where they would have written them.
SWAP_WITH_REFINE, SWAP_WITH_IM_END = 699, 547


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
    return c


def rig(policy, tok):
    ids = special_ids(tok)
    W = np.array(policy.text.lm_head[...])
    for a, b in ((ids.refine, SWAP_WITH_REFINE), (ids.im_end, SWAP_WITH_IM_END)):
        W[:, [a, b]] = W[:, [b, a]]
    policy.text.lm_head[...] = W


def write_golden(out_dir):
    """Run the golden setup in a scratch folder and copy its detail JSONL and result.json into out_dir."""
    out_dir = os.path.abspath(out_dir)
    work = tempfile.mkdtemp()
    cwd = os.getcwd()
    os.chdir(work)  # relative paths: result.json's source_jsonl is "out/detail_synthetic_test.jsonl"
    try:
        c = golden_config()
        models = loading.load_models(c)
        rig(models.policy, models.tokenizer)
        summary = run_eval(c, models)
        os.makedirs(out_dir, exist_ok=True)
        shutil.copy(summary["detail_jsonl"], os.path.join(out_dir, "detail.jsonl"))
        shutil.copy(summary["result_json"], os.path.join(out_dir, "result.json"))
    finally:
        os.chdir(cwd)
        shutil.rmtree(work)


if __name__ == "__main__":
    write_golden(sys.argv[1])
