"""Entry point: `python -m vsr1_jax.main --config=configs/<name>.py [--config.x.y=...]`; dispatches on config.mode
(eval | sft | grpo | demo | stage0 | build) to the run that owns it. No logic of its own."""
import logging

import jax
from absl import app
from ml_collections import config_flags

from vsr1_jax import demo, distributed
from vsr1_jax.agent.evaluate import run_eval
from vsr1_jax.loading import SetupError
from vsr1_jax.prepare import run_build
from vsr1_jax.train.grpo_run import main_grpo
from vsr1_jax.train.sft_run import main_sft
from vsr1_jax.train.stage0 import ensure_engine, main_stage0

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "ml_collections config file")

MODES = {
    "eval": run_eval,       # the search agent over the test queries -> detail JSONL, result.json, report
    "sft": main_sft,        # Stage 1 -> checkpoints, metrics, the final model as an HF folder
    "grpo": main_grpo,      # Stage 2 from a Stage-1 model -> checkpoints, metrics, the final model
    "demo": demo.run_demo,  # the toy pipeline: eval, SFT, eval, GRPO, eval, and the side-by-side report
    "stage0": main_stage0,  # the demo's search engine alone (Stage 0; every demo-model mode runs it first)
    "build": run_build,     # raw videos + annotations -> the prepared layout (the original's 11 steps)
}


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO through absl
    config = _CONFIG.value
    run = MODES.get(config.mode)
    if run is None:
        raise SystemExit(f"error: config.mode={config.mode!r} is not available (known: {', '.join(MODES)})")
    try:
        distributed.initialize(config)  # multi-host jobs (launch/): before anything touches a device
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if config.mode == "build" and jax.process_count() > 1:
        raise SystemExit("error: --config.mode=build runs in one process; start it without launch/")
    try:
        if config.mode not in ("build", "stage0"):
            ensure_engine(config)  # the demo's search engine (a no-op unless demo.stage0.enabled)
        summary = run(config)
    except SetupError as e:
        raise SystemExit(f"error: {e}") from None
    if not distributed.is_primary():
        return
    print(f"{config.mode}: outputs under {summary['output_dir']}")
    for k, v in summary.items():
        if k != "output_dir" and isinstance(v, str) and v.startswith("/"):
            print(f"  {k}: {v}")


if __name__ == "__main__":
    app.run(main)
