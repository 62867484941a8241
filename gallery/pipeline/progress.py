"""Progress of a long job, stage by stage: a bar per stage on a terminal, plain lines in logs.

A `Reporter` shows each stage (rollouts, NMF, attribution, writing, ...) with its counts,
rate and time left: as tqdm bars when its stream is a terminal, as plain lines otherwise
(a log file, CI). A stage that runs a long piece of work without counting is never silent:
a heartbeat thread prints (or refreshes) every open stage that has said nothing for
`interval` seconds, with the work in progress and how long it has run.

Code deep inside a build (a unit recording rollouts, say) reports through `current()`,
the reporter a command installed (`installed`); where none is installed (a library call,
a worker process) the calls do nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

INTERVAL = 5.0
"""Seconds an open stage may stay silent before the heartbeat speaks (issue: at most 10)."""
PLAIN_EVERY = 2.0
"""In plain mode, counting updates print at most this often (the first and last always)."""


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _rate(done: float, seconds: float, unit: str) -> str:
    if done <= 0 or seconds <= 0:
        return f"? {unit}/s"
    per_second = done / seconds
    if per_second >= 1:
        return f"{per_second:,.1f} {unit}/s"
    return f"{seconds / done:,.1f} s/{unit.rstrip('s') or unit}"


class Stage:
    """One stage: `total` items of `unit`; `update`/`set` count them, `begin`/`end` name
    the work in progress (shown by the heartbeat)."""

    def __init__(self, reporter: Reporter, name: str, total: int | None, unit: str):
        self.reporter = reporter
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0
        self.started = reporter.clock()
        self.last_line = self.started
        self.running: dict[str, float] = {}
        self.closed = False
        self.bar: Any = None

    # counting
    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int, total: int | None = None) -> None:
        with self.reporter.lock:
            if self.closed:
                return
            if total is not None:
                self.total = total
            self.done = done
            self.reporter._show(self, final=self.total is not None and done >= self.total)

    # work in progress
    def begin(self, label: str) -> None:
        with self.reporter.lock:
            self.running[label] = self.reporter.clock()

    def end(self, label: str) -> None:
        with self.reporter.lock:
            self.running.pop(label, None)

    def close(self) -> None:
        with self.reporter.lock:
            if not self.closed:
                self.reporter._close(self)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # text
    def describe(self, now: float) -> str:
        elapsed = now - self.started
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        parts = [f"{count} {self.unit}", _rate(self.done, elapsed, self.unit),
                 f"{_duration(elapsed)} elapsed"]
        if self.total is not None and 0 < self.done < self.total:
            left = (self.total - self.done) * elapsed / self.done
            parts.append(f"~{_duration(left)} left")
        text = f"{self.name}: " + ", ".join(parts)
        return text + self.in_progress(now)

    def in_progress(self, now: float) -> str:
        if not self.running:
            return ""
        label, since = next(iter(self.running.items()))
        more = f" and {len(self.running) - 1} more" if len(self.running) > 1 else ""
        return f"; running {label} ({now - since:.0f} s){more}"


class Reporter:
    """Bars (tqdm, on a terminal) or plain lines (otherwise) for the stages of a job.

    `tty` forces the mode (default: whether `stream` is a terminal); `interval` is the
    longest silence of an open stage; `clock` is injectable for tests; `heartbeat=False`
    leaves the silence checks to explicit `tick()` calls.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 interval: float = INTERVAL, plain_every: float = PLAIN_EVERY,
                 clock: Callable[[], float] = time.monotonic, heartbeat: bool = True,
                 prefix: str = ""):
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval = interval
        self.plain_every = plain_every
        self.clock = clock
        self.prefix = prefix
        self.lock = threading.RLock()
        self.stages: list[Stage] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="progress-heartbeat",
                                            daemon=True)
            self._thread.start()

    # stages
    def stage(self, name: str, total: int | None = None, unit: str = "units") -> Stage:
        """Open a stage (close it, or use it as a context manager)."""
        with self.lock:
            stage = Stage(self, name, total, unit)
            if self.tty:
                from tqdm import tqdm

                stage.bar = tqdm(total=total, desc=name, unit=f" {unit}", file=self.stream,
                                 dynamic_ncols=True, leave=True, mininterval=0.5,
                                 unit_scale=False, position=len(self.open_stages()))
            else:
                self._line(stage.describe(stage.started))
            self.stages.append(stage)
            return stage

    def open_stages(self) -> list[Stage]:
        return [s for s in self.stages if not s.closed]

    def message(self, text: str) -> None:
        """A line of its own (above the bars on a terminal)."""
        with self.lock:
            if self.tty:
                from tqdm import tqdm

                tqdm.write(self.prefix + text, file=self.stream)
            else:
                self._line(text)

    def tick(self) -> None:
        """Speak for every open stage silent for `interval` seconds (the heartbeat)."""
        with self.lock:
            now = self.clock()
            for stage in self.open_stages():
                complete = stage.total is not None and stage.done >= stage.total
                if not complete and now - stage.last_line >= self.interval:
                    stage.last_line = now
                    if stage.bar is not None:
                        stage.bar.set_postfix_str(stage.in_progress(now).lstrip("; "),
                                                  refresh=False)
                        stage.bar.refresh()
                    else:
                        self._line(stage.describe(now))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self.lock:
            for stage in self.open_stages():
                self._close(stage)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals (called with the lock held)
    def _show(self, stage: Stage, final: bool) -> None:
        now = self.clock()
        if stage.bar is not None:
            if stage.total is not None and stage.bar.total != stage.total:
                stage.bar.total = stage.total
            stage.bar.n = stage.done
            stage.bar.set_postfix_str(stage.in_progress(now).lstrip("; "), refresh=False)
            stage.bar.refresh() if final else stage.bar.update(0)
            stage.last_line = now
        elif final or now - stage.last_line >= self.plain_every:
            stage.last_line = now
            self._line(stage.describe(now))

    def _close(self, stage: Stage) -> None:
        stage.running.clear()
        if stage.bar is not None:
            stage.bar.close()
        elif stage.total is None or stage.done < stage.total:
            self._line(stage.describe(self.clock()) + ", done")
        stage.closed = True

    def _line(self, text: str) -> None:
        print(self.prefix + text, file=self.stream, flush=True)

    def _beat(self) -> None:
        step = max(0.01, min(1.0, self.interval / 4))
        while not self._stop.wait(step):
            try:
                self.tick()
            except Exception:  # a closed stream must not kill the job
                return


class _Silent(Reporter):
    """What `current()` gives when no reporter is installed: stages that count silently."""

    def __init__(self) -> None:
        super().__init__(stream=_NullStream(), tty=False, heartbeat=False)

    def stage(self, name: str, total: int | None = None, unit: str = "units") -> Stage:
        stage = Stage(self, name, total, unit)
        return stage

    def _show(self, stage: Stage, final: bool) -> None:
        pass

    def _close(self, stage: Stage) -> None:
        stage.closed = True

    def message(self, text: str) -> None:
        pass


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


_CURRENT: Reporter | None = None


def current() -> Reporter:
    """The reporter a command installed, or one that shows nothing."""
    return _CURRENT if _CURRENT is not None else _Silent()


def active() -> bool:
    """Whether a reporter is installed (in this process)."""
    return _CURRENT is not None


@contextlib.contextmanager
def installed(reporter: Reporter) -> Iterator[Reporter]:
    """Make `reporter` the current one for a while; closes it at the end."""
    global _CURRENT
    previous = _CURRENT
    _CURRENT = reporter
    try:
        yield reporter
    finally:
        _CURRENT = previous
        reporter.close()


def counter(prefix: str, units: dict[str, str] | None = None
            ) -> Callable[[str, int, int], None]:
    """A `progress(part, done, total)` callback (gallery.environments.rollouts' kind) that shows
    each
    part as a stage `prefix: part` of the current reporter, closed when it is complete."""
    reporter = current()
    stages: dict[str, Stage] = {}
    units = units or {}

    def progress(part: str, done: int, total: int) -> None:
        stage = stages.get(part)
        if stage is None or (stage.closed and done < total):  # a recording extended
            stage = stages[part] = reporter.stage(f"{prefix}: {part}", total,
                                                  units.get(part, "steps"))
        stage.set(done, total)
        if done >= total:
            stage.close()

    return progress
