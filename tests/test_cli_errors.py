"""The command lines' error style (vsr1_jax/errors.py): every project error and every config-override error is ONE
`error: ...` line naming the file or field and the fix, exit status 2, no traceback (`--verbose` adds it); `--help`
exits 0 and lists the modes and the main keys. Each case is a real `python -m ...` subprocess on a hand-written,
broken prepared dataset; all of them fail before a model is built, and they run side by side."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vsr1_jax import errors
from vsr1_jax.retrieval.index import RetrievalInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = "charades-sta"


def _dataset(root, *, query_dim=4, docid2row=None, segment_embeds=True):
    """A prepared test split of 3 videos and 2 queries (only what evaluation reads before the models load)."""
    rng = np.random.default_rng(0)
    vdir = os.path.join(root, DS, "test", "video_embedding_1fps")
    qdir = os.path.join(root, DS, "test", "query_embedding")
    os.makedirs(vdir)
    os.makedirs(qdir)
    if segment_embeds:
        np.save(os.path.join(vdir, "segment_embeds.npy"), rng.normal(size=(3, 4)).astype(np.float32))
    with open(os.path.join(vdir, "docid2row.json"), "w") as f:
        json.dump(docid2row or {"v0": 0, "v1": 1, "v2": 2}, f)
    np.save(os.path.join(qdir, "query_embeddings.test.npy"), rng.normal(size=(2, query_dim)).astype(np.float32))
    with open(os.path.join(qdir, "query_meta.test.jsonl"), "w") as f:
        for i in range(2):
            f.write(json.dumps({"qid": f"q{i}", "query": f"query {i}", "pos_doc_id": f"v{i}"}) + "\n")
    return root


def _eval(root, checkpoint):
    return ["-m", "vsr1_jax.main", "--config=configs/charades.py", "--config.mode=eval", f"--config.data_root={root}",
            f"--config.checkpoint={checkpoint}", f"--config.output_dir={root}/out"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{case: (argv, CompletedProcess-like)}: every case started at once, then collected."""
    t = tmp_path_factory.mktemp("cli")
    ckpt = t / "ckpt_folder"
    ckpt.mkdir()
    (t / "weights.safetensors").write_text("not a folder")
    cases = {
        "typo": ["-m", "vsr1_jax.main", "--config=configs/toy.py", "--config.sft.learning_rat=1e-3"],
        "typo_verbose": ["-m", "vsr1_jax.main", "--config=configs/toy.py", "--config.sft.learning_rat=1e-3",
                         "--verbose"],
        "no_config_file": ["-m", "vsr1_jax.main", "--config=configs/nope.py"],
        # a key of the sections before issue 24 moved GRPO's and SFT's data fields under their stage
        "moved": ["-m", "vsr1_jax.main", "--config=configs/toy.py", "--config.data.grpo.num_generations=4"],
        "setup": ["-m", "vsr1_jax.main", "--config=configs/charades.py", "--config.mode=eval"],
        "missing_file": _eval(_dataset(str(t / "a"), segment_embeds=False), ckpt),
        "prepared_data": _eval(_dataset(str(t / "b"), docid2row={"v0": 0, "v1": 1, "v2": 5}), ckpt),
        "dimension": _eval(_dataset(str(t / "c"), query_dim=6), ckpt),
        "checkpoint_file": _eval(_dataset(str(t / "d")), t / "weights.safetensors"),
        "convert": ["-m", "vsr1_jax.convert", "hf-to-orbax", str(t / "missing"), str(t / "dst")],
        "bench": ["-m", "benchmarks.sft", "--preset=tiny", "--set", "sft.learning_rat=1e-3", f"--out={t}"],
        "help": ["-m", "vsr1_jax.main", "--help"],
        # a demo world too small for its train split: refused by the plan before Stage 0 starts
        "world": ["-m", "vsr1_jax.main", "--config=configs/toy.py", "--config.synthetic.train.num_videos=400",
                  f"--config.data_root={t / 'world'}", f"--config.output_dir={t / 'world_out'}"],
    }
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = {k: subprocess.Popen([sys.executable, *map(str, v)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, v in cases.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        out[k] = (p.returncode, stdout, stderr)
    return out


def _one_error_line(result):
    rc, _, stderr = result
    assert rc == errors.EXIT_USER_ERROR, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("case,needles", [
    ("typo", ["--config.sft.learning_rat", "'learning_rat'", 'Did you mean "learning_rate"']),
    ("no_config_file", ["--config=configs/nope.py", "No such file"]),
    ("moved", ["--config.data.grpo.num_generations", "it moved: use --config.grpo.num_generations"]),
    ("setup", ["--config.checkpoint is empty", "python -m vsr1_jax.convert hf-to-orbax"]),      # SetupError
    ("missing_file", ["segment_embeds.npy not found", "produced by"]),                       # MissingPreparedFile
    ("prepared_data", ["docid2row.json", "maps 3 docs", "segment_embeds.npy has 3 rows"]),  # PreparedDataError
    ("dimension", ["query_embeddings.test.npy vs", "segment_embeds.npy", "6-d", "4-d"]),    # names both files
    ("checkpoint_file", ["--config.checkpoint=", "weights.safetensors is a file", "training checkpoint"]),
    ("convert", ["no such folder"]),                                                       # ConvertError
    ("world", ["config.synthetic.train.num_videos=400 (seed 0)", "lower config.synthetic.train.num_videos"]),
    ("bench", ["sft.learning_rat=1e-3", "configs/base.py has no field", 'did you mean "learning_rate"']),
])
def test_one_line_error(results, case, needles):
    line = _one_error_line(results[case])
    for n in needles:
        assert n in line, (n, line)


def test_verbose_adds_the_traceback(results):
    rc, _, stderr = results["typo_verbose"]
    assert rc == 2 and "Traceback" in stderr and stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_help_lists_modes_and_main_keys(results):
    rc, stdout, stderr = results["help"]
    assert rc == 0, stderr[-2000:]
    for needle in ("eval", "sft", "grpo", "demo", "build", "--config.checkpoint=", "--config.sft.learning_rate=",
                   "--config.grpo.init_checkpoint=", "--verbose", "exit status"):
        assert needle in stdout, needle


def test_run_cli_maps_project_errors(capsys):
    """The helper the bench scripts call: a RetrievalInputError (any UserError) -> one line and 2; a Stopped run ->
    its message and 128 + signal; anything else propagates."""
    def bad(argv):
        raise RetrievalInputError("x.npy: queries have dimension 3 but the corpus has dimension 4")

    assert errors.run_cli(bad, []) == 2
    assert capsys.readouterr().err == "error: x.npy: queries have dimension 3 but the corpus has dimension 4\n"

    def stopped(argv):
        raise errors.Stopped("sft stopped at step 2/6", 15)

    assert errors.run_cli(stopped, []) == 143
    assert "stopped at step 2/6" in capsys.readouterr().err
    assert errors.run_cli(lambda argv: len(argv), ["--verbose", "a"]) == 1   # --verbose is not passed on

    def bug(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        errors.run_cli(bug, [])
