"""Entry point: `python -m vsr1_jax.main --config=configs/<name>.py [--config.x.y=...]`; dispatches on config.mode."""
import logging

from absl import app, flags
from ml_collections import config_flags

from vsr1_jax.agent.evaluate import run_eval
from vsr1_jax.loading import SetupError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "ml_collections config file")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _CONFIG.value
    if config.mode == "eval":
        try:
            summary = run_eval(config)
        except SetupError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"results written under {summary['output_dir']}")
        for k in ("result_json", "report_txt", "recall_at_k_png", "vcmr_by_turn_png"):
            if k in summary:
                print(f"  {k}: {summary[k]}")
    else:
        raise SystemExit(f"error: config.mode={config.mode!r} is not available (known: 'eval')")


if __name__ == "__main__":
    app.run(main)
