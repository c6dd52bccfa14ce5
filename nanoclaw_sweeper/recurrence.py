"""Recurring tasks: the next occurrence of a cron expression, computed from the occurrence's
**scheduled** time (so runs never drift), in the configured time zone (so "9 every morning"
stays 9 across DST changes). Occurrences missed while NanoClaw was down collapse into one run
now, not one per missed slot (reference/pain-points.md: catch-up storms after downtime)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from nanoclaw_common.errors import Refused


def validate_cron(expression: str) -> str:
    if not croniter.is_valid(expression):
        raise Refused(f"invalid cron expression {expression!r}")
    return expression


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def next_occurrence(expression: str, scheduled_ms: int, tz: str, now: int) -> int:
    """When the occurrence after the one scheduled at ``scheduled_ms`` should run.

    Normally the first cron time after ``scheduled_ms``. If that time has already passed
    (downtime), the answer is the latest cron time not after ``now``: it is due at once, runs
    once, and the occurrence after it is in the future again.
    """
    zone = ZoneInfo(validate_cron(expression) and tz)
    following = _ms(
        croniter(expression, datetime.fromtimestamp(scheduled_ms / 1000, zone)).get_next(datetime)
    )
    if following > now:
        return following
    latest_missed = _ms(
        croniter(expression, datetime.fromtimestamp(now / 1000, zone)).get_prev(datetime)
    )
    # get_prev is strictly before `now`; `now` itself may be an occurrence.
    at_now = croniter.match(expression, datetime.fromtimestamp(now / 1000, zone))
    return now if at_now else max(latest_missed, following)
