"""A progress bar over objects: done / total, running, failed, objects per hour and the time left; one line per
finished, retried or failed object above it."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class ObjectsProgress:
    def __init__(self, total: int, name: str, enabled: bool = True) -> None:
        self.total, self.running, self.failed, self.done = total, 0, 0, 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=name, unit="obj", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} done{postfix}")
        self.refresh()

    def rate_per_hour(self) -> float:
        return 3600.0 * self.done / max(time.perf_counter() - self.t0, 1e-9)

    def eta(self) -> str:
        left = self.total - self.done - self.failed
        if not self.done or left <= 0:
            return "?" if left > 0 else tqdm.format_interval(0)
        return tqdm.format_interval(left * (time.perf_counter() - self.t0) / self.done)

    def refresh(self, redraw: bool = True) -> None:
        self.shown = (self.running, time.perf_counter())
        self.bar.set_postfix_str(f"running {self.running}, failed {self.failed}, {self.rate_per_hour():.1f} obj/h, "
                                 f"ETA {self.eta()}", refresh=redraw)

    def tick(self, every_s: float = 30.0) -> None:
        """Redraw when the running count changed, else every `every_s` (rate and ETA drift; logs stay short)."""
        if self.running != self.shown[0] or time.perf_counter() - self.shown[1] > every_s:
            self.refresh()

    def note(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def finished(self, line: str) -> None:
        self.done += 1
        self.note(line)
        self.refresh(redraw=False)  # the counts first: update() may draw the bar
        self.bar.update(1)
        self.bar.refresh()  # (or may not, within tqdm's mininterval)

    def gave_up(self, line: str) -> None:
        self.failed += 1
        self.note(line)
        self.refresh()

    def close(self) -> None:
        self.bar.close()


__all__ = ["ObjectsProgress"]
