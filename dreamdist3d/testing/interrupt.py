"""A Ctrl-C in the middle of a long job, for tests of what the job keeps and how the same command goes on."""

from __future__ import annotations

from typing import Any, Callable, List, Optional


class StopAtCall:
    """Wraps `fn`: each call is recorded as `record(*args, **kwargs)` in `calls`, and call number `at` (1-based;
    None: none) raises KeyboardInterrupt instead of running, as a Ctrl-C during it would. Set `at` and clear `calls`
    between runs. Patch a method with `lambda self, *a, **k: stop(self, *a, **k)`."""

    def __init__(self, fn: Callable[..., Any], at: Optional[int], record: Callable[..., Any]) -> None:
        self.fn, self.at, self.record = fn, at, record
        self.calls: List[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(self.record(*args, **kwargs))
        if len(self.calls) == self.at:
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


__all__ = ["StopAtCall"]
