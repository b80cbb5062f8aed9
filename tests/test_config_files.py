"""The installed package does not depend on the repo's files: `vsr1_jax` imports nothing from `configs/`, the config
files load from any folder without `sys.path` edits (they load their siblings by path, `vsr1_jax.config_files`),
and `python -m vsr1_jax.main --config=<absolute path of configs/toy.py>` runs from a temporary folder outside the
repo with only the package on the path (a short eval of the demo: synthetic data and tiny models built on first
use). Without `--config`, main finds configs/toy.py from the package's checkout, or says in one line that it is
not there."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vsr1_jax import config_files, errors

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")


def _imported_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.module or ""


def test_package_imports_nothing_from_configs():
    bad = [(str(p.relative_to(ROOT)), name) for p in sorted((ROOT / "vsr1_jax").rglob("*.py"))
           for name in _imported_names(p) if name.split(".")[0] == "configs"]
    assert not bad, bad


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_files_do_not_edit_sys_path(path):
    text = path.read_text(encoding="utf-8")
    assert "sys.path" not in text
    assert not [n for n in _imported_names(path) if n.split(".")[0] == "configs"]


def _package_only(tmp_path) -> dict:
    """An environment whose path holds the package (a link to this checkout's vsr1_jax/) and nothing of the repo."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vsr1_jax").symlink_to(ROOT / "vsr1_jax", target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def test_every_config_loads_from_another_folder(tmp_path):
    code = ("import runpy, sys\n"
            "for p in sys.argv[1:]:\n"
            "    assert len(runpy.run_path(p)['get_config']()), p\n"
            "assert not [m for m in sys.modules if m == 'configs' or m.startswith('configs.')]\n"
            "print('ok', len(sys.argv) - 1)\n")
    paths = [str(p) for p in CONFIGS if not p.name.startswith("_")]   # the _*.py parts have no get_config
    r = subprocess.run([sys.executable, "-c", code, *paths], cwd=tmp_path, env=_package_only(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"ok {len(paths)}" in r.stdout, r.stderr[-3000:]


def test_sibling_loads_once_by_path(tmp_path):
    (tmp_path / "a.py").write_text("X = []\n")
    (tmp_path / "b.py").write_text("from vsr1_jax.config_files import sibling\nA = sibling(__file__, 'a')\n")
    b = config_files.load(tmp_path / "b.py")
    assert b.A is config_files.sibling(tmp_path / "b.py", "a") and b.A.X == []
    with pytest.raises(FileNotFoundError, match="nope.py not found"):
        config_files.sibling(tmp_path / "b.py", "nope")


def test_main_runs_toy_from_a_folder_outside_the_repo(tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _package_only(tmp_path)
    cmd = [sys.executable, "-m", "vsr1_jax.main", f"--config={ROOT / 'configs' / 'toy.py'}", "--config.mode=eval",
           "--config.data_root=data", "--config.output_dir=out", "--config.synthetic.train.num_videos=2",
           "--config.synthetic.test.num_videos=2", "--config.synthetic.progress=False",
           "--config.demo.stage0.enabled=False", "--config.eval.max_samples=1", "--config.eval.max_new_tokens=8",
           "--config.eval.max_turn=1", "--config.agent.batch_size=1"]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluated 1 of 1 queries" in r.stderr + r.stdout
    assert (work / "out" / "result.json").is_file() and (work / "data" / "synthetic").is_dir()
    # no --config: the default is the repo's configs/toy.py, which a package outside its checkout does not have
    r = subprocess.run([sys.executable, "-m", "vsr1_jax.main"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == errors.EXIT_USER_ERROR and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: no --config given and the default {tmp_path / 'site' / 'configs' / 'toy.py'} is not there "
        "(vsr1_jax runs outside its repo checkout): pass --config=<a config file, e.g. the repo's configs/toy.py>"]


def test_main_default_config_is_found_from_the_checkout(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "vsr1_jax.main", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"main config keys (values of {ROOT / 'configs' / 'toy.py'};" in r.stdout
    assert "--config.mode='demo'" in r.stdout
