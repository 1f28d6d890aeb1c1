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
