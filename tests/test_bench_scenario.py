"""The bench scenario base (bench/scenario.py) tears down what a scenario built, also when
building fails half-way (pure: no lab, no programs, no kernel)."""

import pytest

from bench.scenario import Scenario


class Steps(Scenario):
    """Builds `steps` steps, each registering an undo that appends its number to `undone`;
    raises instead of building step `fail_at`."""

    def __init__(self, steps, undone, fail_at=None):
        super().__init__(None, steps, undone, fail_at)

    def _build(self, steps, undone, fail_at):
        for i in range(steps):
            if i == fail_at:
                raise RuntimeError("building failed")
            self.undo.push(undone.append, i)


def test_close_undoes_every_step_in_reverse_once():
    undone = []
    scenario = Steps(3, undone)
    assert undone == []
    scenario.close()
    scenario.close()
    assert undone == [2, 1, 0]


def test_a_failed_build_undoes_what_it_did_and_raises():
    undone = []
    with pytest.raises(RuntimeError, match="building failed"):
        Steps(3, undone, fail_at=2)
    assert undone == [1, 0]


def test_a_scenario_is_a_context_manager():
    undone = []
    with Steps(2, undone):
        pass
    assert undone == [1, 0]


def test_sigterm_unwinds_the_benchmark_but_not_a_forked_child(tmp_path):
    """pyroute2 forks children and stops them with SIGTERM: a child that unwound would run the
    benchmark's finally blocks and delete its namespaces under it."""
    import os
    import signal

    import pytest

    from bench.run import unwind_on_sigterm

    handler = unwind_on_sigterm(os.getpid())
    with pytest.raises(SystemExit):
        handler(signal.SIGTERM, None)
    marker, (r, w) = tmp_path / "unwound", os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, handler)
        try:
            os.write(w, b"x")
            signal.pause()
        finally:
            marker.write_text("the child ran the parent's clean-up")
        os._exit(0)
    os.read(r, 1)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
    assert not marker.exists()


def test_wait_quiet_returns_when_the_cpus_are_quiet_and_gives_up_when_they_never_are():
    from testbed import cpustat

    # no CPU is ever 101 % busy: quiet after two windows, or once a namespace teardown that
    # earlier tests started is over
    waited = cpustat.wait_quiet(threshold=1.01, interval=0.05, max_s=30.0, windows=2)
    assert waited is not None and waited >= 0.1
    assert cpustat.wait_quiet(threshold=0.0, interval=0.05, max_s=0.2) is None  # never below 0 %
