"""One optimiser and one schedule per parameter group of a reweighter, stepped as one.

A reweighter declares its parameter groups (:class:`prm.reweight.ParameterGroup`: dense, or sparse
rows that only move where the hypergradient touched them); the upper problem builds an optimiser for
each and steps them together. A strategy with one group keeps its optimiser and schedule as they are
(so its training state is the optimiser's own ``state_dict``); with several, :class:`GroupedOptimizer`
and :class:`GroupedSchedule` hold them by group name, and their state is a dict keyed by that name.
"""

from __future__ import annotations

from collections.abc import Mapping


def _check_names(kind: str, have: Mapping, state: Mapping) -> None:
    if set(state) != set(have):
        raise ValueError(
            f"{kind} state of parameter groups {sorted(state)} cannot be loaded into groups {sorted(have)}"
        )


class GroupedOptimizer:
    """The optimisers of several parameter groups, by group name (in the reweighter's order).

    ``param_groups``: every optimiser's torch param groups, in that order (the first gives the
    logged ``reweight/lr``); ``step()`` steps each; ``state_dict()`` is ``{group name: state}``.
    """

    def __init__(self, optimizers: Mapping):
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: Mapping) -> None:
        """Raises ValueError when ``state`` holds other group names than these optimisers."""
        _check_names("optimiser", self.optimizers, state)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


class GroupedSchedule:
    """The schedules of a :class:`GroupedOptimizer`'s optimisers, by group name; ``schedules``: them
    in order (what a resume that changed the run's length re-targets, prm/training/state.py)."""

    def __init__(self, schedules: Mapping):
        self.by_name = dict(schedules)
        self.schedules = list(self.by_name.values())

    def step(self) -> None:
        for schedule in self.schedules:
            schedule.step()

    def state_dict(self) -> dict:
        return {name: schedule.state_dict() for name, schedule in self.by_name.items()}

    def load_state_dict(self, state: Mapping) -> None:
        """Raises ValueError when ``state`` holds other group names than these schedules."""
        _check_names("schedule", self.by_name, state)
        for name, schedule in self.by_name.items():
            schedule.load_state_dict(state[name])


def grouped(by_name: Mapping, kind: type):
    """The only value of ``by_name`` when there is one (a one-group strategy keeps its optimiser or
    schedule, and its state, as they are), else ``kind(by_name)``."""
    return next(iter(by_name.values())) if len(by_name) == 1 else kind(by_name)
