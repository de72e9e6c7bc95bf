"""A background loop failing every tick (Redis or the database down) logs one traceback and a
count, not a traceback per tick; a new kind of error gets its own; recovery is said once."""
import logging

from service.runtime.failure_log import FailureStreak


def _records(caplog):
    return [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]


def test_one_traceback_per_outage_then_a_line_a_minute_and_the_recovery(caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("service.runtime.failure_log.time.monotonic", lambda: clock[0])
    log = logging.getLogger("camloop.test.streak")
    streak = FailureStreak(log, "reconcile", every_s=60)
    with caplog.at_level(logging.INFO, logger="camloop.test.streak"):
        for _ in range(240):  # two minutes of ticks every 0.5 s, Redis refusing each time
            try:
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            except ConnectionError as exc:
                streak.failed(exc)
            clock[0] += 0.5
        try:
            raise TimeoutError("database is locked")
        except TimeoutError as exc:
            streak.failed(exc)
        streak.succeeded()
        streak.succeeded()  # a second good tick says nothing
    recs = _records(caplog)
    tracebacks = [m for level, m, tb in recs if tb]
    assert tracebacks == ["reconcile failed (1 in a row)", "reconcile failed (241 in a row)"]
    still = [m for _, m, tb in recs if m.startswith("reconcile still failing")]
    # one line a minute while the same error repeats; the 241st failure was a new error, so it
    # got its own traceback instead of a "still" line
    assert still == ["reconcile still failing: 121 failures in 60 s, last ConnectionError: "
                     "Error 111 connecting to 127.0.0.1:6379. Connection refused."]
    assert recs[-1][:2] == ("WARNING", "reconcile recovered after 241 failures in 120 s")
    assert len(recs) == 4
