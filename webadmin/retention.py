"""Retention in the console (admin): rules with the "changes N recordings" preview, legal holds
with the four-eyes release, and the purge dry run.

Saving or removing a rule is two steps: the form first shows what the change does to the
recordings in the catalog now (retention.plan.impact: how many change their keeping, how many
become due), then the admin confirms. Holds: one admin places a hold or requests its release,
a *different* admin approves the release (retention/store.py refuses the requester). Every
change is written with its audit entry in one transaction (retention/store.py). The purge
itself runs from the timer or `recorderd retention apply`; the console shows the dry run.
Object ids travel in form fields, not in URLs.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, render_template, request
from flask.typing import ResponseReturnValue

from retention.periods import Period, PeriodError
from retention.purge import Purger
from retention.rules import DIRECTIONS, Rule, RuleError
from retention.store import (
    Actor,
    HoldError,
    approve_release,
    current_rules,
    list_holds,
    place_hold,
    remove_rule,
    request_release,
    rule_change_impact,
    rule_set_with,
    rule_set_without,
    save_rule,
    stored_rules,
)
from storage.catalog import UnknownRecording
from webadmin.authz import current_user, define_action, mark_audited, register_nav, requires
from webadmin.context import ConsoleContext, current_context
from webadmin.system import register_section

bp = Blueprint("retention", __name__, url_prefix="/retention")

VIEW = define_action("retention.view", {"admin"}, "see retention rules, legal holds and the purge dry run")
EDIT = define_action("retention.rule_edit", {"admin"}, "add, change and remove retention rules")
HOLD = define_action("retention.hold", {"admin"}, "place legal holds, request or approve their release")
register_nav("Retention", "retention.index", VIEW, order=70)

MAX_FIELD = 1024
PLAN_IDS_SHOWN = 200
LIST_FIELDS = ("tags", "agents", "numbers", "trunks")


def _field(name: str) -> str:
    return request.form.get(name, "")[:MAX_FIELD].strip()


def _list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _field(name).split(",") if part.strip())


def _number(name: str) -> float | None:
    text = _field(name)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise RuleError(f"{name.replace('_', ' ')}: {text!r} is not a number of seconds") from None


def _actor() -> Actor:
    user = current_user()
    return Actor(user.username, user.role)


def _rule_from_form() -> Rule:
    return Rule(_field("name"), Period.parse(_field("period")), is_default=bool(request.form.get("default")),
                directions=frozenset(d for d in request.form.getlist("directions") if d), tags=frozenset(_list("tags")),
                agents=_list("agents"), numbers=_list("numbers"), trunks=_list("trunks"),
                min_duration_s=_number("min_duration_s"), max_duration_s=_number("max_duration_s"),
                description=_field("description"))


def _form_values(rule: Rule | None) -> dict[str, Any]:
    """What the rule form shows (empty, a rule to edit, or what was submitted)."""
    if rule is None:
        return {"name": "", "period": "", "default": False, "directions": [], "tags": "", "agents": "",
                "numbers": "", "trunks": "", "min_duration_s": "", "max_duration_s": "", "description": ""}
    return {"name": rule.name, "period": str(rule.period), "default": rule.is_default,
            "directions": sorted(rule.directions), "tags": ", ".join(sorted(rule.tags)),
            "agents": ", ".join(rule.agents), "numbers": ", ".join(rule.numbers), "trunks": ", ".join(rule.trunks),
            "min_duration_s": "" if rule.min_duration_s is None else f"{rule.min_duration_s:g}",
            "max_duration_s": "" if rule.max_duration_s is None else f"{rule.max_duration_s:g}",
            "description": rule.description}


def _index(status: int = 200, *, form: dict[str, Any] | None = None, error: str = "", notice: str = "",
           preview: dict[str, Any] | None = None) -> ResponseReturnValue:
    ctx = current_context()
    reader = ctx.catalog.reader()
    try:
        rules = stored_rules(reader)
        holds = list_holds(reader, include_released=bool(request.args.get("released")))
    finally:
        reader.close()
    if form is None:
        editing = next((s.rule for s in rules if s.rule.name == request.args.get("edit")), None)
        form = {**_form_values(editing), "replace": editing is not None}
    return render_template("retention/index.html", rules=rules, holds=holds, form=form, directions=DIRECTIONS,
                           error=error, notice=notice, preview=preview, me=current_user().username), status


@bp.get("")
@requires(VIEW)
def index() -> ResponseReturnValue:
    return _index()


@bp.post("/rules")
@requires(EDIT)
def save() -> ResponseReturnValue:
    """Preview (default) or, with ``confirm``, save a rule; ``replace`` allows changing one."""
    ctx = current_context()
    submitted = {**_form_values(None), **{k: _field(k) for k in _form_values(None) if k not in ("default", "directions")},
                 "default": bool(request.form.get("default")), "directions": request.form.getlist("directions"),
                 "replace": bool(request.form.get("replace"))}
    try:
        rule = _rule_from_form()
        before = current_rules(ctx.catalog)
        if rule.name in before.by_name and not submitted["replace"]:
            raise RuleError(f"a rule named {rule.name} exists already: edit it instead")
        after = rule_set_with(before, rule)
    except (RuleError, PeriodError) as err:
        return _index(400, form=submitted, error=str(err))
    change = rule_change_impact(ctx.catalog, before, after, time.time())
    if not request.form.get("confirm"):
        return _index(form=submitted, preview={"kind": "save", "rule": rule.to_dict(), "impact": change})
    save_rule(ctx.catalog, ctx.audit, rule, _actor(), impact=change)
    mark_audited()   # save_rule wrote the entry, with the rule before and after
    return _index(form=_form_values(None) | {"replace": False},
                  notice=f"Rule {rule.name} saved: it changed the keeping of {change['changed']} recording(s).")


@bp.post("/rules/remove")
@requires(EDIT)
def remove() -> ResponseReturnValue:
    ctx = current_context()
    name = _field("name")
    try:
        before = current_rules(ctx.catalog)
        after = rule_set_without(before, name)
    except RuleError as err:
        return _index(400, error=str(err))
    change = rule_change_impact(ctx.catalog, before, after, time.time())
    if not request.form.get("confirm"):
        return _index(preview={"kind": "remove", "rule": before.by_name[name].to_dict(), "impact": change})
    remove_rule(ctx.catalog, ctx.audit, name, _actor(), impact=change)
    mark_audited()
    return _index(notice=f"Rule {name} removed: it changed the keeping of {change['changed']} recording(s).")


@bp.post("/holds")
@requires(HOLD)
def place() -> ResponseReturnValue:
    ctx = current_context()
    recording_id = _field("recording_id") or None
    search = {key: _field(key) for key in ("query", "party", "tag", "date_from", "date_to", "agent_id")
              if _field(key)}
    try:
        hold = place_hold(ctx.catalog, ctx.audit, _actor(), _field("case"), _field("reason"),
                          recording_id=recording_id, search=search or None)
    except (HoldError, UnknownRecording, ValueError) as err:
        return _index(400, error=f"Legal hold not placed: {err}")
    mark_audited()
    return _index(notice=f"Legal hold {hold.id} placed for case {hold.case_name}: {hold.items} recording(s) now"
                         + (", and whatever the search matches later." if hold.search else "."))


def _hold_id() -> int:
    try:
        return int(_field("hold_id"))
    except ValueError:
        abort(400, description="hold_id: not a number")


@bp.post("/holds/release")
@requires(HOLD)
def release() -> ResponseReturnValue:
    ctx = current_context()
    try:
        hold = request_release(ctx.catalog, ctx.audit, _actor(), _hold_id(), _field("reason"))
    except HoldError as err:
        return _index(400, error=str(err))
    mark_audited()
    return _index(notice=f"Release of legal hold {hold.id} requested; it stays in force until another admin "
                         f"approves.")


@bp.post("/holds/approve")
@requires(HOLD)
def approve() -> ResponseReturnValue:
    ctx = current_context()
    try:
        hold = approve_release(ctx.catalog, ctx.audit, _actor(), _hold_id())
    except HoldError as err:
        mark_audited()   # approve_release audited the refusal
        return _index(403 if "four eyes" in str(err) else 400, error=str(err))
    mark_audited()
    return _index(notice=f"Legal hold {hold.id} released (requested by {hold.release_requested_by}).")


@bp.get("/plan")
@requires(VIEW)
def plan() -> ResponseReturnValue:
    """The dry run: what a purge now would delete, per rule (the ids, up to a page each)."""
    ctx = current_context()
    result = Purger(ctx.catalog, ctx.audit, ctx.keys, ctx.vault_dir, _actor()).make_plan(time.time())
    return render_template("retention/plan.html", plan=result, shown=PLAN_IDS_SHOWN)


def _system_rows(ctx: ConsoleContext) -> list[tuple[str, str]]:
    reader = ctx.catalog.reader()
    try:
        rules = stored_rules(reader)
        holds = list_holds(reader)
        stones: Any = reader.conn.execute("SELECT count(*), max(purged_at) FROM retention_tombstones").fetchall()[0]
    finally:
        reader.close()
    default = next((s.rule for s in rules if s.rule.is_default), None)
    return [("rules", str(len(rules))),
            ("default rule", f"{default.name} ({default.period})" if default else "none: unmatched recordings are kept"),
            ("legal holds in force", str(len(holds))),
            ("recordings purged", str(stones[0])),
            ("last purge", time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(stones[1])) if stones[1] else "never")]


register_section("Retention", _system_rows)
