"""The import graph of vsr1_jax is clean (tools/check_imports.py, which parses the modules without importing them),
and the checker itself finds each kind of violation in a small fake package."""
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools" / "check_imports.py")
check_imports = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check_imports  # dataclasses look their module up there
_spec.loader.exec_module(check_imports)


def test_vsr1_jax_import_graph_is_clean():
    violations = check_imports.check(ROOT / "vsr1_jax")
    assert not violations, "import rules broken (python tools/check_imports.py):\n" + "\n".join(map(str, violations))


def _package(tmp_path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "vsr1_jax"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name != "__init__.py" and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(textwrap.dedent(text))
    return pkg


def _kinds(violations):
    return sorted((v.path, v.line, v.kind) for v in violations)


def test_clean_fake_package(tmp_path):
    pkg = _package(tmp_path, {
        "processing/video.py": "import numpy as np\n",
        "processing/chat.py": "from vsr1_jax.processing import video as _video\nfrom . import video\n",
        "data/files.py": "from vsr1_jax.processing.video import np\n",
        "agent/episode.py": "from vsr1_jax.data import files\n\ndef f():\n    import faiss  # lazy: absent on GPUs\n"
                            "    import json\n",
    })
    assert check_imports.check(pkg) == []


def test_cycle_with_function_level_edge(tmp_path):
    pkg = _package(tmp_path, {
        "processing/a.py": "from vsr1_jax.processing import b\n",
        "processing/b.py": "def f():\n    from vsr1_jax.processing.a import x\n",
    })
    got = check_imports.check(pkg)
    assert _kinds(got) == [("vsr1_jax/processing/a.py", 1, "cycle"),
                           ("vsr1_jax/processing/b.py", 2, "lazy-vsr1-import")]
    cycle = next(v for v in got if v.kind == "cycle")
    assert "vsr1_jax.processing.a (line 1) -> vsr1_jax.processing.b (line 2) -> vsr1_jax.processing.a" in cycle.message


def test_relative_import_cycle(tmp_path):
    pkg = _package(tmp_path, {"data/a.py": "from .b import y\n", "data/b.py": "from . import a\n"})
    assert [v.kind for v in check_imports.check(pkg)] == ["cycle"]


@pytest.mark.parametrize("src, text, message", [
    ("processing/p.py", "from vsr1_jax.data import files\n", "processing (layer 0) imports data (layer 2)"),
    ("models/m.py", "from vsr1_jax.processing import video\n", "models may import only: buckets, errors, kernels"),
    ("data/d.py", "from vsr1_jax.retrieval import index\n",
     "data may import only: buckets, config_files, errors, processing"),
    ("agent/e.py", "from vsr1_jax.train import grpo\n", "agent (layer 5) imports train (layer 6)"),
    ("distributed.py", "from vsr1_jax.train import grpo\n", "distributed (layer 0) imports train (layer 6)"),
])
def test_layer_arrows(tmp_path, src, text, message):
    pkg = _package(tmp_path, {src: text, "data/files.py": "", "processing/video.py": "",
                              "retrieval/index.py": "", "train/grpo.py": ""})
    got = check_imports.check(pkg)
    assert [v.kind for v in got] == ["layer"] and message in got[0].message, got


def test_only_listed_components_import_train(tmp_path):
    # a top-rank component that is not main or demo (every rank-7/8 one of the real table is one of them)
    layers = {**check_imports.LAYERS, "tool": (9, check_imports.BELOW)}
    pkg = _package(tmp_path, {"tool.py": "from vsr1_jax.train import grpo\n", "train/grpo.py": ""})
    got = check_imports.check(pkg, layers=layers)
    assert [v.kind for v in got] == ["layer"] and "only main, demo may import train" in got[0].message, got


def test_type_checking_imports_count(tmp_path):
    pkg = _package(tmp_path, {
        "processing/p.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vsr1_jax.data import f\n",
        "data/f.py": "",
    })
    assert [v.kind for v in check_imports.check(pkg)] == ["layer"]


def test_lazy_third_party_needs_a_comment(tmp_path):
    pkg = _package(tmp_path, {"retrieval/index.py": """\
        def a():
            import faiss
        def b():
            # lazy: tokenizers/transformers are slow to import
            from tokenizers import AddedToken
            from transformers import (
                Qwen2Tokenizer,
            )
        def c():
            import torch  # lazy: optional
            import json
        class K:
            def m(self):
                import jax
        """})
    got = check_imports.check(pkg)
    assert _kinds(got) == [("vsr1_jax/retrieval/index.py", 2, "uncommented-lazy-import"),
                           ("vsr1_jax/retrieval/index.py", 14, "uncommented-lazy-import")]


def test_unknown_component_and_missing_module(tmp_path):
    pkg = _package(tmp_path, {"newthing.py": "", "agent/x.py": "from vsr1_jax.loading import load\n"})
    assert _kinds(check_imports.check(pkg)) == [("vsr1_jax/agent/x.py", 1, "missing-module"),
                                                ("vsr1_jax/newthing.py", 1, "unknown-component")]


def test_package_never_imports_the_repo_configs(tmp_path):
    """configs/ is not shipped with the package (setup.py): no import of it, at module top or in a function."""
    pkg = _package(tmp_path, {"data/synthetic.py": """\
        import configs
        from configs._synthetic import get_synthetic_config
        def f():
            from configs import toy  # lazy: still not shipped
        """})
    got = check_imports.check(pkg)
    assert _kinds(got) == [("vsr1_jax/data/synthetic.py", i, "repo-import") for i in (1, 2, 4)], got
    assert "configs/ is not part of the installed vsr1_jax" in got[0].message


def test_a_long_module_says_why_it_is_one(tmp_path):
    """No module over MAX_MODULE_LINES lines unless its docstring says why it is one (issue 24)."""
    body = "x = 1\n" * check_imports.MAX_MODULE_LINES
    pkg = _package(tmp_path, {"data/long.py": '"""A long module."""\n' + body,
                              "data/reasoned.py": '"""A long module. One module because it is a table."""\n' + body,
                              "data/short.py": '"""Short."""\n' + "x = 1\n" * 10})
    got = check_imports.check(pkg)
    assert _kinds(got) == [("vsr1_jax/data/long.py", 1, "module-size")], got
    assert f"{check_imports.MAX_MODULE_LINES + 1} lines" in got[0].message
