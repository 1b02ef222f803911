"""Property tests of the retention policy (hypothesis): pure planning, no files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from portunus.engine.backup import backup_name
from portunus.engine.retention import PERIODS, Backup, Policy, plan

START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN_MINUTES = 3 * 366 * 24 * 60


@st.composite
def backup_sets(draw) -> list[Backup]:
    """Backups over three years, clustered enough that periods share several."""
    offsets = draw(st.lists(st.integers(0, SPAN_MINUTES), min_size=0, max_size=60))
    extras = draw(st.lists(st.integers(0, 999_999), max_size=len(offsets)))
    found = {}
    for index, minutes in enumerate(offsets):
        when = START + timedelta(minutes=minutes)
        if index < len(extras):  # a second backup within the same second
            when = when.replace(microsecond=extras[index])
        name = backup_name(when, precise=bool(when.microsecond))
        found[name] = Backup(name, when)
    return list(found.values())


counts = st.integers(0, 12)
withins = st.one_of(st.none(), st.integers(1, 400 * 24).map(lambda h: timedelta(hours=h)))
policies = st.builds(Policy, counts, counts, counts, counts, counts, counts, withins)
non_empty_policies = policies.filter(lambda p: not p.empty)


def kept(decided) -> set[str]:
    return {d.backup.name for d in decided.decisions if d.keep}


def reference_kept(items: list[Backup], policy: Policy) -> set[str]:
    """An independent statement of restic's rules: group by period, then pick."""
    if policy.empty:
        return {b.name for b in items}
    ordered = sorted(items, key=lambda b: (b.time, b.name), reverse=True)
    keep = {b.name for b in ordered[: policy.keep_last]}
    for rule, period in PERIODS.items():
        newest_per_period: dict[tuple, Backup] = {}
        for b in ordered:
            newest_per_period.setdefault(period(b.time), b)
        for key in sorted(newest_per_period, reverse=True)[: policy.counts()[rule]]:
            keep.add(newest_per_period[key].name)
    if policy.keep_within and ordered:
        newest = ordered[0].time
        keep |= {b.name for b in ordered if newest - b.time < policy.keep_within}
    return keep


@given(backup_sets(), non_empty_policies)
def test_the_newest_backup_is_never_removed(items, policy):
    """Whatever the policy, the newest backup survives."""
    decided = plan(items, policy)
    if items:
        newest = max(items, key=lambda b: (b.time, b.name))
        assert newest.name in kept(decided)


@given(backup_sets(), policies, st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_the_order_of_the_files(items, policy, rng):
    """Directory listing order must not change a single decision."""
    shuffled = list(items)
    rng.shuffle(shuffled)
    assert plan(shuffled, policy).decisions == plan(items, policy).decisions


@given(backup_sets(), policies, policies)
def test_a_policy_that_keeps_more_never_removes_what_a_smaller_one_keeps(items, small, extra):
    """Raising any keep_* (or keep_within) only ever keeps more."""
    within = [w for w in (small.keep_within, extra.keep_within) if w]
    larger = Policy(
        small.keep_last + extra.keep_last,
        small.keep_hourly + extra.keep_hourly,
        small.keep_daily + extra.keep_daily,
        small.keep_weekly + extra.keep_weekly,
        small.keep_monthly + extra.keep_monthly,
        small.keep_yearly + extra.keep_yearly,
        sum(within, timedelta()) if within else None,
    )
    if small.empty:
        return  # the empty policy keeps everything by definition, not by rule
    assert kept(plan(items, small)) <= kept(plan(items, larger))


def _pair(hours_apart: int) -> list[Backup]:
    return [
        Backup(backup_name(when), when) for when in (START, START + timedelta(hours=hours_apart))
    ]


@given(backup_sets(), policies)
# keep_within's boundary: a backup exactly that much older is not kept.
@example(_pair(1), Policy(keep_within=timedelta(hours=1)))
def test_the_plan_matches_an_independent_statement_of_the_rules(items, policy):
    """Streaming newest-first gives what grouping by period gives."""
    assert kept(plan(items, policy)) == reference_kept(items, policy)


@given(backup_sets(), policies)
def test_every_backup_gets_exactly_one_decision_with_its_reasons(items, policy):
    """Kept backups name a rule; removed ones name none."""
    decided = plan(items, policy)
    assert sorted(d.backup.name for d in decided.decisions) == sorted(b.name for b in items)
    assert all(bool(d.reasons) == d.keep for d in decided.decisions)
