"""Count XLA compilations: a context manager over `jax.monitoring`'s backend-compile events. The training loops log
the count (a step that compiles again on later batches is a shape-bucketing bug), and tests assert it."""
from __future__ import annotations

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """`with CompileCounter() as c: ...; c.count` = backend compilations started inside the block (any function)."""

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == _EVENT:
            self.count += 1

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)
