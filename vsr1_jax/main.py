"""Entry point: `python -m vsr1_jax.main --config=configs/<name>.py [--config.x.y=...] [--verbose]`; dispatches on
config.mode (eval | sft | grpo | demo | stage0 | build) to the run that owns it. Its own logic is the command line only:
`--help`, and the error style of vsr1_jax/errors.py (a config typo or a project error is one `error: ...` line, exit
status 2; `--verbose` adds the traceback). Without `--config` it runs the repo's configs/toy.py, found from the
package's checkout (`config_files.DEFAULT_CONFIG`), so it works from any folder."""
import ast
import logging
import os
import runpy
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from vsr1_jax import config_files, demo, distributed, errors
from vsr1_jax.agent.evaluate import main_eval
from vsr1_jax.data.synthetic_world import plan_splits
from vsr1_jax.prepare import run_build
from vsr1_jax.train.grpo_run import main_grpo
from vsr1_jax.train.sft_run import main_sft
from vsr1_jax.train.stage0 import ensure_engine, main_stage0

DEFAULT_CONFIG = str(config_files.DEFAULT_CONFIG)   # <repo>/configs/toy.py
# no default here: absl would load it when this module is imported, even when --config names another file;
# parse_flags adds --config=DEFAULT_CONFIG when none is given
_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (default: the repo's "
                                          "configs/toy.py)")

MODES = {"eval": main_eval, "sft": main_sft, "grpo": main_grpo, "demo": demo.run_demo, "stage0": main_stage0,
         "build": run_build}
MODE_HELP = {
    "eval": "the search agent over the test queries -> detail JSONL, result.json, report (--config.checkpoint)",
    "sft": "Stage 1 -> checkpoints, metrics, the final model as an HF folder",
    "grpo": "Stage 2 from a Stage-1 model (--config.grpo.init_checkpoint) -> checkpoints, metrics, the final model",
    "demo": "the toy pipeline: eval, SFT, eval, GRPO, eval, and the side-by-side report",
    "stage0": "the demo's search engine alone (Stage 0; every demo-model mode runs it first)",
    "build": "raw videos + annotations -> the prepared layout (the original's 11 steps)",
}
# the settings most runs change, shown by --help with their values in the chosen config
MAIN_KEYS = ("mode", "dataset", "data_root", "split", "checkpoint", "output_dir", "model.dtype", "demo.enabled",
             "eval.max_samples", "eval.max_turn", "sft.learning_rate", "sft.max_steps", "sft.num_epochs",
             "sft.per_device_batch_size", "grpo.init_checkpoint", "grpo.learning_rate", "grpo.max_steps",
             "grpo.loss_type", "grpo.generation_batch_size", "grpo.per_device_batch_size")
_VERBOSE = False
# config keys that moved (issue 24: each stage's settings under that stage): old prefix -> new prefix (the longest
# matching prefix wins)
MOVED = {"data.sft.": "sft.",
         **{f"data.grpo.{k}": f"data.build.grpo.{k}" for k in ("hard_negative_depth", "augment_match_to_balance",
                                                              "target_match_ratio", "augment_seed",
                                                              "drop_missing_video_npy")},
         "data.grpo.": "grpo."}


def moved_key(arg: str) -> str | None:
    """The new name of a `--config.<key>=...` argument whose key moved (MOVED), else None."""
    key = arg.split("=", 1)[0][len("--config."):] if arg.startswith("--config.") else ""
    old = max((o for o in MOVED if key.startswith(o)), key=len, default=None)
    return MOVED[old] + key[len(old):] if old else None


def _config_file(argv) -> str | None:
    """The config file named on the command line (the last --config wins, as in absl), else None."""
    path = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def usage(argv) -> str:
    """--help: the command, the modes, the error style and the main config keys with their values in the config
    given (`--config=...`, default configs/toy.py)."""
    path = _config_file(argv) or DEFAULT_CONFIG
    lines = [__doc__.split(";")[0].replace("Entry point: ", "usage: "), "",
             "modes (--config.mode=...):"]
    lines += [f"  {name:6s} {text}" for name, text in MODE_HELP.items()]
    lines += ["", "exit status: 0 done, 1 unexpected failure, 2 a user error (one 'error: ...' line naming the file or "
              "setting and the fix; --verbose prints the traceback), 130 / 143 stopped by SIGINT / SIGTERM (training "
              "saves first; run the same command to resume)", ""]
    try:
        config = runpy.run_path(path)["get_config"]()
    except Exception as e:  # noqa: BLE001  a broken config file still gets the rest of --help
        return "\n".join(lines + [f"(config {path} did not load: {e})"])
    lines.append(f"main config keys (values of {path}; every key of the config file can be overridden):")
    for key in MAIN_KEYS:
        node = config
        for part in key.split("."):
            node = node[part]
        lines.append(f"  --config.{key}={node!r}")
    lines.append("sections: " + ", ".join(k for k in config.keys() if hasattr(config[k], "keys")))
    return "\n".join(lines)


def _unquote(msg: str) -> str:
    """ml_collections wraps a KeyError's repr in an AttributeError's: undo the layers of quoting."""
    for _ in range(3):
        try:
            value = ast.literal_eval(msg)
        except (ValueError, SyntaxError):
            break
        if not isinstance(value, str):
            break
        msg = value
    return msg


def override_error(exc: BaseException, argv) -> errors.ConfigOverrideError:
    """A flag-parsing failure as one message naming the `--config...` argument it came from and the fix."""
    msg = " ".join(_unquote(str(exc)).split())
    if isinstance(exc, (AttributeError, KeyError)):
        key = msg.split("'")[1] if msg.count("'") >= 2 else msg
        arg = next((a for a in argv if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")), None)
        where = arg.split("=", 1)[0] if arg else "a --config override"
        hint = msg[len(key) + 2:].strip()
        new = moved_key(arg) if arg else None
        fix = f"it moved: use --config.{new}" if new else "see --help for the main keys"
        msg = f"{where}: the config has no field {key!r}{'; ' + hint if hint else ''}; {fix}"
    elif isinstance(exc, OSError) and "config" in msg:
        last = [ln.strip() for ln in _unquote(str(exc)).splitlines() if ln.strip()][-1]
        msg = f"--config={_config_file(argv) or DEFAULT_CONFIG} could not be loaded: {last}"
    return errors.ConfigOverrideError(msg)


def parse_flags(argv):
    """absl's flag parsing with the project's error style; `--verbose` and `--help` are handled here."""
    global _VERBOSE
    argv, _VERBOSE = errors.split_verbose(argv)
    if any(a in ("-h", "--help", "--helpfull", "-?") for a in argv[1:]):
        print(usage(argv[1:]))
        sys.exit(0)
    if _config_file(argv[1:]) is None:
        if config_files.default_config() is None:
            sys.exit(errors.report(errors.ConfigOverrideError(
                f"no --config given and the default {DEFAULT_CONFIG} is not there (vsr1_jax runs outside its repo "
                "checkout): pass --config=<a config file, e.g. the repo's configs/toy.py>"), _VERBOSE))
        argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.keys()   # a config file that failed to load raises here (ml_collections defers the error)
        return rest
    except Exception as e:  # noqa: BLE001  any failure here comes from the command line or the config file
        err = override_error(e, argv)
        err.__cause__ = e
        sys.exit(errors.report(err, _VERBOSE))


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO through absl
    config = _CONFIG.value
    try:
        run = MODES.get(config.mode)
        if run is None:
            raise errors.ConfigOverrideError(f"config.mode={config.mode!r} is not available (known: "
                                             f"{', '.join(MODES)})")
        try:
            distributed.initialize(config)  # multi-host jobs (launch/): before anything touches a device
        except ValueError as e:
            raise errors.ConfigOverrideError(str(e)) from e
        if config.mode == "build" and jax.process_count() > 1:
            raise errors.ConfigOverrideError("--config.mode=build runs in one process; start it without launch/")
        if config.demo.enabled:   # the synthetic world's plan (milliseconds): a world too small fails here, not
            plan_splits(config.synthetic)   # after the minutes of Stage 0
        if config.mode not in ("build", "stage0"):
            ensure_engine(config)  # the demo's search engine (a no-op unless demo.stage0.enabled)
        summary = run(config)
    except errors.UserError as e:
        sys.exit(errors.report(e, _VERBOSE))
    except errors.Stopped as e:   # training saved a checkpoint after SIGINT / SIGTERM
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:     # Ctrl-C outside the training loop (loading, evaluation)
        print(f"{config.mode}: interrupted", file=sys.stderr)
        sys.exit(errors.EXIT_SIGINT)
    if not distributed.is_primary():
        return
    print(f"{config.mode}: outputs under {summary['output_dir']}")
    for k, v in summary.items():
        if k != "output_dir" and isinstance(v, str) and os.path.isabs(v):
            print(f"  {k}: {v}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
