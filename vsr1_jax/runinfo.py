"""What a run folder says about itself: the resolved config it ran with (`config.json`), the code version, and the
settings that changed since the last run in the same folder (a resume). Base layer: used by evaluation, training
and the demo."""
from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from typing import Any

CONFIG_FILE = "config.json"
# settings a resumed run may change without changing what it computes
_HARMLESS = ("output_dir", "data.loader.", "synthetic.progress", "sft.log_every", "grpo.log_every")


def config_dict(config) -> dict:
    """A ConfigDict (or mapping) as plain JSON values (tuples become lists)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw, default=str))


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_config(config, out_dir: str) -> str:
    """Write the resolved config as `<out_dir>/config.json`; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CONFIG_FILE)
    with open(path, "w") as f:
        json.dump(config_dict(config), f, indent=2, sort_keys=True)
    return path


def load_saved_config(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def changed_settings(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of every flattened setting that differs, except those in `_HARMLESS`."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(k == h or (h.endswith(".") and k.startswith(h)) for h in _HARMLESS)]


def describe_changes(changes: list[tuple[str, Any, Any]], limit: int = 12) -> str:
    text = ", ".join(f"{k} {o!r} -> {n!r}" for k, o, n in changes[:limit])
    return text + (f" (+{len(changes) - limit} more)" if len(changes) > limit else "")


def code_version() -> str:
    """`git describe --always --dirty` of the source tree when it is a git checkout, else the installed package
    version, else "unknown"."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--tags"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return f"git {out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"vsr1_jax {metadata.version('vsr1_jax')}"
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["CONFIG_FILE", "changed_settings", "code_version", "config_dict", "describe_changes", "flatten",
           "load_saved_config", "save_config"]
