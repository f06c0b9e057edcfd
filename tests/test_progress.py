"""Progress reporting: plain timed lines where stderr is not a terminal, tqdm where it is."""

import io

import pytest
from tqdm import tqdm

from superpose import training
from superpose.config import resolve
from superpose.progress import LineProgress, format_seconds, make_progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_format_seconds():
    assert format_seconds(0) == "0:00"
    assert format_seconds(65) == "1:05"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(-3) == "0:00"


def test_lines_only_after_the_interval_with_rate_and_time_left():
    clock, err, out = Clock(), io.StringIO(), io.StringIO()
    bar = LineProgress(1000, initial=200, desc="clnp", interval=60, file=err, out=out,
                       clock=clock)
    for _ in range(100):  # 100 steps in 50 s: no line yet
        clock.now += 0.5
        bar.update()
    assert err.getvalue() == ""
    bar.set_postfix(task=1, loss="0.143")
    for _ in range(20):  # crosses 60 s at the 120th step since the start
        clock.now += 0.5
        bar.update()
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    # 120 steps in 60 s: 2 step/s (the 200 restored steps do not count), 680 left: 5:40
    assert lines[0] == ("clnp: step 320/1000 (32.0 %), 2.00 step/s, 1:00 elapsed, 5:40 left, "
                        "task=1, loss=0.143")
    bar.write("[clnp] after task 0: 0.981")
    assert out.getvalue() == "[clnp] after task 0: 0.981\n"
    assert "\r" not in err.getvalue() + out.getvalue()


def test_close_writes_the_last_line_once():
    clock, err = Clock(), io.StringIO()
    bar = LineProgress(10, interval=60, file=err, clock=clock)
    clock.now += 5
    bar.update(10)
    bar.close()
    bar.close()
    assert err.getvalue().splitlines() == ["step 10/10 (100.0 %), 2.00 step/s, 0:05 elapsed"]
    idle = LineProgress(10, initial=10, interval=60, file=io.StringIO(), clock=clock)
    idle.close()  # nothing was done: nothing to report
    assert idle.file.getvalue() == ""


def test_bad_interval():
    with pytest.raises(ValueError, match="interval"):
        LineProgress(10, interval=0)


def test_make_progress_picks_by_terminal():
    assert isinstance(make_progress(10, 0, "x", enabled=True, file=io.StringIO()), LineProgress)
    bar = make_progress(10, 0, "x", enabled=True, file=Terminal())
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    off = make_progress(10, 0, "x", enabled=False, file=io.StringIO())
    assert isinstance(off, tqdm) and off.disable


def test_a_run_into_a_log_writes_no_carriage_returns(tmp_path, capsys):
    cfg = resolve({"benchmark": "permuted-digits", "method": "standard", "tasks": 2,
                   "steps_per_task": 6, "eval_every": 3, "threads": 1})
    training.run(cfg, tmp_path / "r", progress=True)
    captured = capsys.readouterr()  # pytest's captured streams are not terminals
    assert "\r" not in captured.err + captured.out
    assert "[standard] after task 0:" in captured.out
    assert "[standard] after task 1:" in captured.out
    assert captured.err.rstrip().splitlines()[-1].startswith("standard: step 12/12 (100.0 %)")


def test_time_left_at_the_pace_so_far():
    from superpose.report import time_left

    # 1,000 of 4,000 steps in 600 s: 3,000 more at 0.6 s each
    assert time_left(1000, 4000, 600.0, "unfinished") == "30:00"
    assert time_left(12657, 42190, 1576.0, "unfinished") == "1:01:17"
    for done in [(4000, 4000, 600.0, "unfinished"), (1000, 4000, 600.0, "finished"),
                 (0, 4000, 1.0, "unfinished"), (None, 4000, 1.0, "unfinished"),
                 (10, None, 1.0, "unfinished"), (10, 4000, None, "unfinished")]:
        assert time_left(*done) == ""
