"""The search page's query string → catalog.search() keywords (pure; errors named per field).

Dates are calendar days in UTC (the console shows times in UTC): ``from`` is the start of its
day, ``to`` includes its whole day. Durations are seconds. ``tags`` is a comma-separated list
(every tag must be present). ``completeness``: ``full`` (every expected packet received),
``loss`` (some missing), ``partial`` (the recording stopped early: recorder crash, disk full).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from storage.catalog import CONSENT_FILTERS, ORDERINGS

DIRECTIONS = ("inbound", "outbound", "internal", "unknown")
COMPLETENESS: dict[str, dict[str, Any]] = {"full": {"min_completeness": 1.0}, "loss": {"completeness_below": 1.0},
                "partial": {"state": "partial"}}
MAX_TEXT = 200
MAX_PAGE = 10_000
FIELDS = ("q", "from", "to", "party", "agent", "direction", "tags", "min_duration", "max_duration",
          "completeness", "consent", "order")


@dataclass
class SearchForm:
    values: dict[str, str]                       # what the user typed, to fill the form again
    filters: dict[str, Any] = field(default_factory=dict)
    query: str | None = None
    order_by: str = "-started_at"
    page: int = 1
    errors: dict[str, str] = field(default_factory=dict)

    def link_args(self, **changes: Any) -> dict[str, Any]:
        """Query arguments for a link to this search with some changed (paging, sorting)."""
        args: dict[str, Any] = {k: v for k, v in self.values.items() if v}
        args.update({k: v for k, v in changes.items()})
        return {k: v for k, v in args.items() if v not in (None, "")}


def _day(text: str) -> datetime:
    return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1e7:
        raise ValueError
    return value


def parse_search(args: Mapping[str, str]) -> SearchForm:
    values = {name: (args.get(name) or "").strip()[:MAX_TEXT] for name in FIELDS}
    form = SearchForm(values)
    form.query = values["q"] or None
    for name, key in (("party", "party"), ("agent", "agent_id")):
        if values[name]:
            form.filters[key] = values[name]
    if values["from"] or values["to"]:
        try:
            if values["from"]:
                form.filters["date_from"] = _day(values["from"]).timestamp()
            if values["to"]:
                form.filters["date_to"] = (_day(values["to"]) + timedelta(days=1)).timestamp()
        except ValueError:
            form.errors["dates"] = "Dates are YYYY-MM-DD."
        else:
            if form.filters.get("date_from", 0) >= form.filters.get("date_to", float("inf")):
                form.errors["dates"] = "The first day is after the last day."
    for name in ("min_duration", "max_duration"):
        if values[name]:
            try:
                form.filters[name] = _seconds(values[name])
            except ValueError:
                form.errors[name] = "Durations are seconds (a number)."
    for name, choices in (("direction", DIRECTIONS), ("consent", tuple(CONSENT_FILTERS)),
                          ("completeness", tuple(COMPLETENESS))):
        value = values[name]
        if not value:
            continue
        if value not in choices:
            form.errors[name] = f"Choose one of: {', '.join(choices)}."
        elif name == "completeness":
            form.filters.update(COMPLETENESS[value])
        else:
            form.filters[name] = value
    tags = [t.strip() for t in values["tags"].split(",") if t.strip()]
    if tags:
        form.filters["tags"] = tags
    if values["order"]:
        if values["order"] in ORDERINGS:
            form.order_by = values["order"]
        else:
            form.errors["order"] = "Unknown sort order."
    page_text = (args.get("page") or "1").strip()
    form.page = int(page_text) if page_text.isdigit() and 1 <= int(page_text) <= MAX_PAGE else 1
    return form
