"""gallery.pipeline.progress: per-stage progress with counts, rate and time left; plain lines when
the output is not a terminal; no open stage silent for longer than the interval."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from gallery.environments import EnvSpec
from gallery.environments.rollouts import ObservationConfig, TrajectoryConfig, collect
from gallery.models.policy import load_policy
from gallery.pipeline import progress

DEMO = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-clear.jd"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(clock: FakeClock, **options) -> tuple[progress.Reporter, io.StringIO]:
    stream = io.StringIO()
    return progress.Reporter(stream, tty=False, clock=clock, heartbeat=False,
                             **options), stream


def test_plain_lines_name_the_stage_with_counts_rate_and_time_left():
    clock = FakeClock()
    reporter, stream = plain(clock, plain_every=0)
    with reporter.stage("attribution", 4, "units") as stage:
        for _ in range(4):
            clock.now += 30
            stage.update()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "attribution: 0/4 units, ? units/s, 0:00 elapsed"
    assert lines[1] == "attribution: 1/4 units, 30.0 s/unit, 0:30 elapsed, ~1:30 left"
    assert lines[2] == "attribution: 2/4 units, 30.0 s/unit, 1:00 elapsed, ~1:00 left"
    assert lines[-1] == "attribution: 4/4 units, 30.0 s/unit, 2:00 elapsed"
    assert len(lines) == 5
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_fast_counting_is_thinned_but_first_and_last_are_kept():
    clock = FakeClock()
    reporter, stream = plain(clock, plain_every=2.0)
    stage = reporter.stage("rollouts: observations", 1000, "policy steps")
    for _ in range(1000):
        clock.now += 0.01  # 10 s in all: a line every 2 s at most
        stage.update()
    lines = stream.getvalue().splitlines()
    assert 5 <= len(lines) <= 7
    assert lines[-1].startswith("rollouts: observations: 1,000/1,000 policy steps, "
                                "100.0 policy steps/s")
    counts = [int(re.search(r": ([\d,]+)/", line).group(1).replace(",", ""))
              for line in lines]
    assert counts == sorted(counts) and counts[0] == 0


def test_a_slow_stage_speaks_at_least_every_interval_with_the_work_in_progress():
    clock = FakeClock()
    reporter, stream = plain(clock, interval=10.0)
    stage = reporter.stage("NMF", 5, "units")
    stage.begin("coinrun: NMF 1a")
    said_at = [clock.now]
    for _ in range(95):  # 95 s of one unit's work, the heartbeat checking every second
        clock.now += 1
        before = stream.getvalue().count("\n")
        reporter.tick()
        if stream.getvalue().count("\n") > before:
            said_at.append(clock.now)
    gaps = [b - a for a, b in zip(said_at, said_at[1:])]
    assert len(said_at) == 10 and max(gaps) <= 10
    last = stream.getvalue().splitlines()[-1]
    assert last == "NMF: 0/5 units, ? units/s, 1:30 elapsed; running coinrun: NMF 1a (90 s)"
    stage.end("coinrun: NMF 1a")
    stage.update()
    assert stream.getvalue().splitlines()[-1] == (
        "NMF: 1/5 units, 95.0 s/unit, 1:35 elapsed, ~6:20 left")
    # a finished stage is quiet
    stage.set(5)
    lines = len(stream.getvalue().splitlines())
    clock.now += 60
    reporter.tick()
    assert len(stream.getvalue().splitlines()) == lines


def test_the_heartbeat_thread_speaks_without_any_update():
    stream = io.StringIO()
    with progress.Reporter(stream, tty=False, interval=0.05) as reporter:
        stage = reporter.stage("writing", 3, "parts")
        stage.begin("trajectory 0")
        time.sleep(0.6)
        count = stream.getvalue().count("running trajectory 0")
    assert count >= 4


def test_on_a_terminal_a_tqdm_bar_per_stage():
    stream = io.StringIO()
    with progress.Reporter(stream, tty=True, heartbeat=False) as reporter:
        with reporter.stage("NMF", 3, "units") as stage:
            stage.update(3)
    text = stream.getvalue()
    assert "NMF" in text and "3/3" in text and "\r" in text


def test_without_an_installed_reporter_stages_are_silent(capsys):
    assert not progress.active()
    stage = progress.current().stage("NMF", 2)
    stage.update(2)
    stage.close()
    assert capsys.readouterr().err == ""


def test_rollouts_report_both_recordings_with_counts():
    policy = load_policy(DEMO)
    spec = EnvSpec.from_args(policy.args)
    stream = io.StringIO()
    with progress.installed(progress.Reporter(stream, tty=False, plain_every=0,
                                              heartbeat=False)):
        collect(policy, spec, TrajectoryConfig(2, 8), ObservationConfig(4, 3, 5), 0,
                progress.counter("rollouts", {"observations": "policy steps"}))
    lines = stream.getvalue().splitlines()
    assert "rollouts: trajectories: 16/16 steps" in "\n".join(lines)
    observations = [line for line in lines if line.startswith("rollouts: observations: ")]
    assert [line.split(",")[0] for line in observations] == [
        "rollouts: observations: 0/60 policy steps",
        "rollouts: observations: 20/60 policy steps",
        "rollouts: observations: 40/60 policy steps",
        "rollouts: observations: 60/60 policy steps"]
