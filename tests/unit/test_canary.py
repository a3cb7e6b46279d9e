"""The canary's split of new tasks and its verdict (fleetd.canary): pure, no daemon."""

from __future__ import annotations

import pytest

from fleetd.canary import Action, CanaryPolicy, VersionFigures, judge, median, routes_to_canary


@pytest.mark.parametrize("percent", [1, 5, 10, 33, 50])
@pytest.mark.parametrize("seed", ["a", "deployment-7", "0f3a"])
def test_the_canary_gets_its_percent_of_every_block_whatever_the_seed(seed: str, percent: int) -> None:
    picks = [routes_to_canary(seed, position, percent) for position in range(1000)]
    assert sum(picks) == 10 * percent  # exactly: 1,000 tasks are ten whole blocks
    for block in range(10):
        assert sum(picks[block * 100:(block + 1) * 100]) == percent


def test_over_1000_tasks_the_share_is_within_two_points_from_any_start() -> None:
    """The issue's bound: any 1,000 consecutive tasks, not only whole blocks."""
    picks = [routes_to_canary("seed", position, 20) for position in range(3000)]
    for start in range(0, 2000, 37):
        assert abs(sum(picks[start:start + 1000]) / 1000 - 0.20) <= 0.02


def test_the_split_is_reproducible_and_differs_between_seeds() -> None:
    first = [routes_to_canary("x", p, 10) for p in range(500)]
    assert first == [routes_to_canary("x", p, 10) for p in range(500)]
    assert first != [routes_to_canary("y", p, 10) for p in range(500)]


def test_the_split_is_random_within_a_block() -> None:
    """Not the first ``percent`` of each block: a client cannot time its tasks onto one version."""
    chosen = [p for p in range(100) if routes_to_canary("seed", p, 10)]
    assert chosen != list(range(10)) and len(chosen) == 10
    assert [p for p in range(100, 200) if routes_to_canary("seed", p, 10)] != [c + 100 for c in chosen]


@pytest.mark.parametrize("percent", [0, 51, 100, -1, 2.5, True, "10"])
def test_a_percent_out_of_range_is_refused(percent: object) -> None:
    with pytest.raises(ValueError, match="canary percent"):
        routes_to_canary("s", 0, percent)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="canary percent"):
        CanaryPolicy(percent)  # type: ignore[arg-type]


@pytest.mark.parametrize("position", [-1, 1.0, True, None])
def test_a_position_must_be_a_count(position: object) -> None:
    with pytest.raises(ValueError, match="position"):
        routes_to_canary("s", position, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "message"), [
    ({"promote_after": 0}, "promote-after"),
    ({"promote_after": 100_001}, "promote-after"),
    ({"max_error_rate_increase": 1.5}, "max-error-rate-increase"),
    ({"max_error_rate_increase": float("nan")}, "max-error-rate-increase"),
    ({"max_cost_increase": -0.1}, "max-cost-increase"),
    ({"max_duration_increase": float("inf")}, "max-duration-increase"),
    ({"max_usd": 0}, "canary-max-usd"),
    ({"max_usd": -1.0}, "canary-max-usd"),
])
def test_policy_options_out_of_range_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanaryPolicy(10, **options)  # type: ignore[arg-type]


def test_median() -> None:
    assert median(()) is None
    assert median((3.0, 1.0, 2.0)) == 2.0
    assert median((4.0, 1.0, 2.0, 3.0)) == 2.5


def figures(succeeded: int, failed: int = 0, dead: int = 0, cost: float = 0.01,
            duration: float = 2.0) -> VersionFigures:
    return VersionFigures(succeeded, failed, dead, cost * succeeded, (duration,) * succeeded)


POLICY = CanaryPolicy(10, promote_after=100)


def test_it_waits_for_promote_after_finished_canary_tasks() -> None:
    verdict = judge(figures(99), figures(900), POLICY)
    assert verdict.action is Action.WAIT and "99 of 100" in verdict.reason


def test_as_good_and_cheaper_is_promoted() -> None:
    verdict = judge(figures(100, cost=0.009), figures(900, cost=0.01), POLICY)
    assert verdict.action is Action.PROMOTE
    assert "$0.009000 vs $0.010000" in verdict.reason


def test_half_failing_is_rolled_back_before_promote_after() -> None:
    """v2 fails every other task: certain once its failures alone exceed the bound at 100 tasks."""
    base = figures(900)
    for finished in range(1, 100):
        canary = figures(finished - finished // 2, failed=finished // 2)
        verdict = judge(canary, base, POLICY)
        if verdict.action is Action.ROLLBACK:
            break
        assert verdict.action is Action.WAIT
    assert verdict.action is Action.ROLLBACK
    assert canary.errors == 6 and finished == 12  # 6/100 > 0 % + 5 %: certain after 12 tasks, not 100
    assert "at least 6.0 %" in verdict.reason


def test_early_rollback_is_against_the_current_versions_own_rate() -> None:
    """The current version fails 10 %: the canary may fail up to 15 % before it is certain to lose."""
    base = figures(90, failed=10)
    assert judge(figures(5, failed=15), base, POLICY).action is Action.WAIT
    assert judge(figures(5, failed=16), base, POLICY).action is Action.ROLLBACK


def test_dead_tasks_count_as_errors() -> None:
    assert judge(figures(90, dead=10), figures(100), POLICY).action is Action.ROLLBACK


def test_an_error_rate_within_the_allowed_increase_is_promoted() -> None:
    assert judge(figures(95, failed=5), figures(100), POLICY).action is Action.PROMOTE  # +5.0 points: allowed
    assert judge(figures(94, failed=6), figures(100), POLICY).action is Action.ROLLBACK


def test_a_dearer_canary_is_rolled_back() -> None:
    assert judge(figures(100, cost=0.012), figures(100, cost=0.01), POLICY).action is Action.PROMOTE  # +20 %
    verdict = judge(figures(100, cost=0.0121), figures(100, cost=0.01), POLICY)
    assert verdict.action is Action.ROLLBACK and "cost per succeeded task" in verdict.reason


def test_a_canary_that_costs_where_the_current_costs_nothing_is_rolled_back() -> None:
    assert judge(figures(100, cost=0.001), figures(100, cost=0.0), POLICY).action is Action.ROLLBACK
    assert judge(figures(100, cost=0.0), figures(100, cost=0.0), POLICY).action is Action.PROMOTE


def test_a_slower_canary_is_rolled_back() -> None:
    assert judge(figures(100, duration=3.0), figures(100, duration=2.0), POLICY).action is Action.PROMOTE  # +50 %
    verdict = judge(figures(100, duration=3.1), figures(100, duration=2.0), POLICY)
    assert verdict.action is Action.ROLLBACK and "p50 duration" in verdict.reason


def test_with_no_current_task_finished_only_the_error_rate_is_judged() -> None:
    verdict = judge(figures(100), VersionFigures(), POLICY)
    assert verdict.action is Action.PROMOTE and "cost not compared" in verdict.reason


def test_the_spend_cap_rolls_back_at_once() -> None:
    policy = CanaryPolicy(10, max_usd=1.0)
    assert judge(figures(3), figures(100), policy, canary_spent_usd=0.99).action is Action.WAIT
    verdict = judge(figures(3), figures(100), policy, canary_spent_usd=1.0)
    assert verdict.action is Action.ROLLBACK and "cap" in verdict.reason


def test_a_verdict_carries_its_inputs_for_the_event() -> None:
    data = judge(figures(100), figures(200), POLICY, 0.5).to_json()
    assert data["action"] == "promote" and data["canary"]["finished"] == 100
    assert data["current"]["cost_per_succeeded_usd"] == pytest.approx(0.01)
    assert data["policy"]["promote_after"] == 100 and data["canary_spent_usd"] == 0.5
