from __future__ import annotations

import optuna

from autoinfer.search.pareto import dominates, frontier_indices, pareto_trials


def test_dominance_respects_direction() -> None:
    assert dominates([2, 1], [1, 1], [True, True])
    assert not dominates([1, 1], [1, 1], [True, True])  # equal is not domination
    assert dominates([1, 1], [2, 1], [False, True])
    assert not dominates([2, 0], [1, 1], [True, True])


def test_frontier() -> None:
    pts = [(1, 5), (2, 4), (2, 2), (3, 1), (0, 0), (3, 1)]
    assert frontier_indices(pts, [True, True]) == [0, 1, 3, 5]
    assert frontier_indices(pts, [False, False]) == [4]


def test_pareto_trials_skip_infeasible_and_duplicates() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    for values, feasible, dup in [
        ((3, 3), False, False),
        ((2, 2), True, False),
        ((1, 3), True, False),
        ((2, 2), True, True),
    ]:
        t = study.ask()
        t.set_constraint("c", -1.0 if feasible else 1.0)
        if dup:
            t.set_user_attr("duplicate_of", 1)
        study.tell(t, values)
    assert [t.number for t in pareto_trials(study)] == [1, 2]
