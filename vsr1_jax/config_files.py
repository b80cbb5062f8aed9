"""Config files by path. The repo's `configs/*.py` build on each other (a dataset config starts from `base.py`,
`base.py` from the per-area `_*.py` files) by loading their siblings by path, so a config loads from any folder
without the repo root on `sys.path`:

    # configs/toy.py
    from vsr1_jax.config_files import sibling
    base_config = sibling(__file__, "base").get_config

`main`'s default `--config` is found from the package's repo checkout (`DEFAULT_CONFIG`), not the current folder.
`read_section` and the section dataclasses below turn config sections into the typed settings each stage takes
(train/settings.py, agent/evaluate.py's EvalSettings).
The package itself never imports `configs/` (setup.py does not ship it; tools/check_imports.py checks that).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
import sys
from pathlib import Path
from types import ModuleType

# the repo checkout the package sits in: <repo>/vsr1_jax/config_files.py -> <repo>/configs/toy.py
DEFAULT_CONFIG = Path(os.path.abspath(__file__)).parents[1] / "configs" / "toy.py"

_loaded: dict[str, ModuleType] = {}


def load(path: str | os.PathLike) -> ModuleType:
    """The Python file `path` as a module (once per file per process; later calls return the same module)."""
    path = os.path.abspath(path)
    if path in _loaded:
        return _loaded[path]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    # a name of its own (not `configs.<stem>`): a config loaded by path never shadows or is shadowed by a package
    name = f"_vsr1_config_{len(_loaded)}_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module     # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _loaded[path] = module
    return module


def sibling(anchor: str | os.PathLike, name: str) -> ModuleType:
    """The config file `<name>.py` in the folder of `anchor` (a config file's `__file__`), loaded by path."""
    return load(Path(os.path.abspath(anchor)).parent / f"{name}.py")


def default_config() -> str | None:
    """The repo's configs/toy.py when the package runs from its repo checkout, else None."""
    return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None


def read_section(cls, section):
    """An instance of the frozen dataclass `cls` with each field read from the config section of the same name
    and cast to its annotated type (`tuple[T, ...]` field: a tuple of T; a dataclass field: its sub-section read
    the same way): a section read once, at the boundary."""
    hints = typing.get_type_hints(cls)

    def cast(kind, value):
        if dataclasses.is_dataclass(kind):
            return read_section(kind, value)
        if typing.get_origin(kind) is tuple:
            return tuple(typing.get_args(kind)[0](x) for x in value)
        return kind(value)

    return cls(**{f.name: cast(hints[f.name], section[f.name]) for f in dataclasses.fields(cls)})


# ---- config sections several stages read the same way (the stages' typed settings hold them) ----------------
@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """`config.<stage>.checkpoint` (configs/_train.py): every_fraction of the steps (0: every_steps), keep."""
    every_fraction: float
    every_steps: int
    keep: int
    async_save: bool


@dataclasses.dataclass(frozen=True)
class Loader:
    """`config.data.loader`: the grain pipeline's workers and read buffers."""
    worker_count: int
    worker_buffer_size: int
    read_threads: int
    prefetch_buffer_size: int


@dataclasses.dataclass(frozen=True)
class PixelBudget:
    """One phase of `config.video` (sft / grpo / eval): the per-frame and per-video pixel limits and the fps."""
    min_pixels: int
    max_pixels: int
    total_pixels: int
    fps: float


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Where the prepared layout is (`data_root`, `dataset`) and the split a stage reads (`data.train_split` for
    training, `split` for evaluation)."""
    data_root: str
    dataset: str
    split: str
