"""fixedq.progress: a live bar on a terminal, one line per stage otherwise."""

import io

from fixedq.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, steps=(10, 20, 30), total=30, **kwargs):
    with Progress("calibrating", total=total, unit="samples", stream=stream, **kwargs) as bar:
        for done in steps:
            bar.update(done)
    return stream.getvalue()


def test_log_gets_one_line_per_stage_and_no_carriage_returns():
    log = io.StringIO()
    for _ in range(2):  # two stages, two lines
        _run(log, steps=range(1, 1001), total=1000)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert all(line.startswith("calibrating: 1000/1000 samples in ") for line in lines)


def test_terminal_gets_a_live_bar_ending_in_a_newline():
    out = _run(_Terminal())
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "\r" in out and "[" + "#" * 30 + "] 30/30 samples in " in out


def test_terminal_redraws_are_throttled():
    out = _run(_Terminal(), steps=range(1, 100001), total=100000)
    assert out.count("\r") < 200  # 100,000 updates, a few redraws (10 per second at most)


def test_disabled_writes_nothing_and_unknown_total_counts():
    assert _run(io.StringIO(), enabled=False) == ""
    log = io.StringIO()
    with Progress("inspecting", unit="samples", stream=log) as bar:
        bar.update(7)
    assert log.getvalue().startswith("inspecting: 7 samples in ")


def test_an_exception_still_ends_the_line():
    log = io.StringIO()
    try:
        with Progress("weight rounding", total=4, unit="layers", stream=log) as bar:
            bar.update(2)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert log.getvalue().startswith("weight rounding: 2/4 layers in ")
