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


def test_a_long_stage_in_a_log_writes_running_lines(monkeypatch):
    import fixedq.progress as progress

    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # every update is "long enough"
    log = io.StringIO()
    with Progress("weight rounding", total=3, unit="layers", stream=log) as bar:
        for i, name in enumerate(("conv1", "conv2", "fc"), start=1):
            bar.update(i, detail=name)
    lines = log.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines[:3]] == [
        "weight rounding (running): 1/3 layers (conv1)",
        "weight rounding (running): 2/3 layers (conv2)",
        "weight rounding (running): 3/3 layers (fc)"]
    assert all(ln.endswith(" s so far") for ln in lines[:3]) and "\r" not in log.getvalue()
    assert len(lines) == 4 and lines[3].startswith("weight rounding: 3/3 layers (fc) in ")
    # on a terminal the live bar is the progress: no running lines
    assert "running" not in _run(_Terminal())
    assert _run(io.StringIO(), enabled=False) == ""
