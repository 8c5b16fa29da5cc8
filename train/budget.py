"""A time budget spent well on any machine: a budgeted run times its first steps, then sizes its epochs
and its cosine schedule so that the run ends within the budget with the learning rate annealed.

The same recipe trains ~5x slower on an AVX2-only CPU than on one with AVX-512 BF16, so a schedule
planned in epochs either anneals long after the budget stops the run (the learning rate never comes
down: a worse model) or ends early. Planned from the measured speed instead, the run keeps the recipe's
epochs where they fit; where they do not, it trains fewer and shorter ones (no epoch longer than a pass
over the text, and each long enough that scoring, checkpoint and samples take a small share of it).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

PROBE_STEPS = 10  # steps timed, after the first (which traces and compiles), before a budgeted run plans
OVERHEAD_SHARE = 0.1  # an epoch's scoring, checkpoint and samples: at most this share of the epoch's time
GROW_MARGIN = 0.5  # of an epoch: the room a plan must have spare, beyond one more epoch, to take one
RECENT_EPOCHS = 3  # a plan follows the median time of this many latest epochs, not the last one alone


@dataclass(frozen=True)
class BudgetPlan:
    """What a budgeted run trains: `epochs` of `steps_per_epoch` steps, the learning rate annealed over
    all of them; from the seconds a step took and an epoch's scoring, checkpoint and samples take."""

    epochs: int
    steps_per_epoch: int
    step_s: float
    overhead_s: float
    budget_s: float
    spent_s: float  # of the budget, when the plan was made

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def describe(self, recipe_epochs: int, pass_steps: int) -> str:
        recipe_s = recipe_epochs * (pass_steps * self.step_s + self.overhead_s)
        return (f"budget {self.budget_s:,.0f} s ({self.spent_s:.0f} s spent): {self.step_s:.3f} s a step, "
                f"{self.overhead_s:.1f} s to score and save an epoch; the recipe's {recipe_epochs} epochs of "
                f"{pass_steps:,} steps would take {recipe_s:,.0f} s, so {self.epochs} epoch(s) of "
                f"{self.steps_per_epoch:,} steps, the learning rate annealed over {self.total_steps:,}")


def plan_budget(budget_s: float, spent_s: float, steps_done: int, step_s: float, overhead_s: float,
                epochs: int, pass_steps: int) -> BudgetPlan | None:
    """The plan for a run that has spent `spent_s` of `budget_s` and taken `steps_done` steps of its
    first epoch; None when the recipe's `epochs` of `pass_steps` steps fit as they are."""
    available = budget_s - spent_s
    if (epochs * pass_steps - steps_done) * step_s + epochs * overhead_s <= available:
        return None
    count = min(epochs, max(1, int(available * OVERHEAD_SHARE / max(overhead_s, 1e-9))))

    def steps_for(n: int) -> int:  # the steps n epochs leave room for, those already done included
        return steps_done + max(0, int((available - n * overhead_s) / step_s))

    if steps_for(count) > count * pass_steps:  # no epoch past one pass: as many whole passes as fit
        count = min(epochs, max(count, int(available / (pass_steps * step_s + overhead_s))))
    per_epoch = min(pass_steps, max(steps_done + 1, steps_for(count) // count))
    return BudgetPlan(count, per_epoch, step_s, overhead_s, budget_s, spent_s)


def typical_epoch_s(epoch_times: list[float]) -> float:
    """The time an epoch takes now: the median of the latest RECENT_EPOCHS. Epochs of one run vary by
    5-10% on a shared CPU (55 to 59 s on Nietzsche, avx2), and a plan that followed the last one alone
    moved its schedule's end back and forth; a lasting change of speed still shows within two epochs."""
    return statistics.median(epoch_times[-RECENT_EPOCHS:])


def epochs_that_fit(plan: BudgetPlan, epochs_done: int, spent_s: float, epoch_s: float, most: int) -> int:
    """The epochs that fit the budget at the measured `epoch_s` (training, scoring and saving one), at
    most `most` (the recipe's): after each epoch the plan meets the machine's real speed, fewer epochs
    where the rest would not fit, more where epochs run faster than the first steps said (a run planned
    from one slow epoch otherwise left a quarter of its budget unused). The plan's count stays while it
    fits and grows only with GROW_MARGIN of an epoch to spare: epochs vary by a few percent, and a count
    that flipped between two values after each epoch moved the schedule's end back and forth."""
    room = (plan.budget_s - spent_s) / max(epoch_s, 1e-9)  # epochs the rest of the budget holds
    planned = plan.epochs - epochs_done
    if planned <= room < planned + 1 + GROW_MARGIN:
        return plan.epochs
    more = int(room) if room < planned else int(room - GROW_MARGIN)
    return max(epochs_done, min(most, epochs_done + more))
