"""`recorderd retention plan|apply|rule ...|hold ...`: retention rules, legal holds, purge.

Every command is audited (actor: the OS user, role admin). ``--now T`` (a test clock) is
refused unless ``retention.allow_test_clock`` is true in the configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from capture.recording import iso_utc
from recorderd.appliance import Appliance, cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, add_search_filters, appliance_from
from retention.periods import Period, PeriodError
from retention.plan import PurgePlan
from retention.purge import Purger
from retention.rules import DIRECTIONS, Rule, RuleError, RuleSet
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
from storage.catalog import UnknownRecording, to_epoch


def register(sub: argparse._SubParsersAction) -> None:
    retention = sub.add_parser("retention", help="retention rules, legal holds and the purge")
    rsub = retention.add_subparsers(dest="retention_command", required=True)

    plan = rsub.add_parser("plan", help="dry run: what a purge now would delete, per rule")
    plan.add_argument("--now", help="evaluate at this instant (ISO 8601 or epoch; needs retention.allow_test_clock)")
    plan.add_argument("--ids", action="store_true", help="list the ids (with --json they are always listed)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(run=cmd_plan)

    apply = rsub.add_parser("apply", help="purge what is due: destroy keys, delete vault files, keep tombstones")
    apply.add_argument("--now", help="as plan (needs retention.allow_test_clock)")
    apply.add_argument("--json", action="store_true")
    apply.set_defaults(run=cmd_apply)

    rule = rsub.add_parser("rule", help="retention rules")
    rule_sub = rule.add_subparsers(dest="rule_command", required=True)
    add = rule_sub.add_parser("add", help="add a rule (or --replace one); prints how many recordings it changes")
    add.add_argument("name")
    add.add_argument("--period", required=True, help="e.g. 30d, 6m, 7y")
    add.add_argument("--default", action="store_true", help="the rule for recordings no other rule matches")
    add.add_argument("--direction", action="append", default=[], choices=DIRECTIONS)
    add.add_argument("--tag", action="append", default=[], help="matches recordings with any of these tags")
    add.add_argument("--agent", action="append", default=[], help="agent group: agent id or glob (trading-*)")
    add.add_argument("--number", action="append", default=[], help="glob on either party's number (+4930*)")
    add.add_argument("--trunk", action="append", default=[], help="glob on the recording's trunk")
    add.add_argument("--min-duration", type=float, help="seconds, inclusive")
    add.add_argument("--max-duration", type=float, help="seconds, exclusive (a misdial rule: --max-duration 5)")
    add.add_argument("--description", default="")
    add.add_argument("--replace", action="store_true", help="replace the rule of this name")
    add.add_argument("--dry-run", action="store_true", help="only show what it would change")
    add.add_argument("--json", action="store_true")
    add.set_defaults(run=cmd_rule_add)
    listing = rule_sub.add_parser("list", help="the rules")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_rule_list)
    remove = rule_sub.add_parser("remove", help="remove a rule; prints how many recordings it changes")
    remove.add_argument("name")
    remove.add_argument("--dry-run", action="store_true")
    remove.add_argument("--json", action="store_true")
    remove.set_defaults(run=cmd_rule_remove)

    hold = rsub.add_parser("hold", help="legal holds")
    hold_sub = hold.add_subparsers(dest="hold_command", required=True)
    hadd = hold_sub.add_parser("add", help="a legal hold on one recording or on a search")
    hadd.add_argument("--case", required=True, help="case name")
    hadd.add_argument("--reason", required=True)
    hadd.add_argument("--recording", help="one recording id")
    hadd.add_argument("--query", help="search words / part of a number (as recorderd search)")
    add_search_filters(hadd)
    hadd.add_argument("--json", action="store_true")
    hadd.set_defaults(run=cmd_hold_add)
    hlist = hold_sub.add_parser("list", help="holds in force (--all: released ones too)")
    hlist.add_argument("--all", action="store_true")
    hlist.add_argument("--json", action="store_true")
    hlist.set_defaults(run=cmd_hold_list)
    release = hold_sub.add_parser("release", help="request a release (--reason), or approve one as a second admin")
    release.add_argument("hold_id", type=int)
    who = release.add_mutually_exclusive_group(required=True)
    who.add_argument("--reason", help="request the release, saying why")
    who.add_argument("--approve", action="store_true", help="approve a release another admin requested")
    release.add_argument("--json", action="store_true")
    release.set_defaults(run=cmd_hold_release)


def _actor() -> Actor:
    return Actor(cli_actor(), ROLE)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def evaluation_time(app: Appliance, given: str | None) -> float:
    """``now``, or the ``--now`` test clock where the configuration allows one."""
    if given is None:
        return time.time()
    if not app.config["retention"]["allow_test_clock"]:
        raise UsageError("--now: refused, retention.allow_test_clock is false in the configuration "
                         "(a test clock would let a purge run in the future)")
    try:
        moment = to_epoch(given)
    except ValueError as err:
        raise UsageError(f"--now: {err}") from err
    assert moment is not None
    return moment


def _purger(app: Appliance) -> Purger:
    return Purger(app.catalog, app.audit, app.keys, app.vault_dir, _actor(),
                  offsite_shred=app.config["retention"]["offsite_shred"])


# -- plan and apply -------------------------------------------------------------------------------

def print_plan(result: PurgePlan, with_ids: bool) -> None:
    print(f"purge at {iso_utc(result.now)}: {result.total} recording(s)")
    for name in sorted(result.due):
        tally = result.due[name]
        print(f"  {name:<24} {tally.count:>8}  oldest {iso_utc(tally.oldest)}  newest {iso_utc(tally.newest)}")
        if with_ids:
            for rid in tally.ids:
                print(f"      {rid}")
    cases = ", ".join(f"{case}: {n}" for case, n in sorted(result.held_by_case.items()))
    print(f"held (legal hold, due otherwise): {result.held.count}" + (f" ({cases})" if cases else ""))
    print(f"kept (not due yet): {result.kept}; no rule matches (kept): {result.no_rule}; "
          f"being recorded: {result.active}; purged earlier: {result.purged}")


def cmd_plan(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        now = evaluation_time(app, args.now)
        result = _purger(app).make_plan(now)
        app.audit.append(cli_actor(), ROLE, "retention_plan", "retention", "ok",
                         detail={"now": iso_utc(now), "due": result.total, "held": result.held.count})
    if args.json:
        _print_json(result.to_dict(with_ids=True))
    else:
        print_plan(result, args.ids)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        now = evaluation_time(app, args.now)
        result = _purger(app).apply(now, limit=app.config["retention"]["max_purge_per_run"])
    if args.json:
        _print_json(result.to_dict())
    else:
        print(f"purged {len(result.purged)} recording(s) at {iso_utc(now)}: keys destroyed, "
              f"{result.files_removed} vault file(s) deleted, tombstones kept")
        if result.finished_earlier:
            print(f"finished {len(result.finished_earlier)} purge(s) an interrupted run left")
        for rid, why in sorted(result.skipped.items()):
            print(f"  not purged: {rid}: {why}")
        if result.deferred:
            print(f"{result.deferred} more due: beyond retention.max_purge_per_run, left for the next run")
        print(f"held: {result.plan.held.count}")
        keys = result.keys
        if keys.moved or keys.destroyed or keys.created:
            print(f"keys: {keys.moved} rewrapped under their expiry month's KEK, {len(keys.destroyed)} KEK(s) "
                  f"destroyed (older copies of the purged recordings are unreadable now)")
        for rid, why in sorted(keys.unreadable.items()):
            print(f"recorderd: retention apply: {rid}: key left under its KEK: {why}", file=sys.stderr)
        if keys.created:
            print(f"{len(keys.created)} new KEK(s): export a fresh escrow (recorderd keys export-escrow) and "
                  f"destroy older escrows")
    return EXIT_OK


# -- rules ------------------------------------------------------------------------------------------

def rule_from_args(args: argparse.Namespace) -> Rule:
    try:
        return Rule(args.name, Period.parse(args.period), is_default=args.default,
                    directions=frozenset(args.direction), tags=frozenset(args.tag), agents=tuple(args.agent),
                    numbers=tuple(args.number), trunks=tuple(args.trunk), min_duration_s=args.min_duration,
                    max_duration_s=args.max_duration, description=args.description)
    except (RuleError, PeriodError) as err:
        raise UsageError(f"retention rule: {err}") from err


def _report_change(verb: str, name: str, change: dict[str, Any], dry_run: bool, as_json: bool) -> None:
    if as_json:
        _print_json({"rule": name, "saved": not dry_run, "impact": change})
        return
    print(f"{'would ' if dry_run else ''}{verb} rule {name}: changes {change['changed']} recording(s) "
          f"({change['newly_due']} newly due, {change['no_longer_due']} no longer due; "
          f"due now {change['due_before']} -> {change['due_after']})")


def _change_rules(args: argparse.Namespace, name: str, verbs: tuple[str, str],
                  after_of: Callable[[RuleSet], RuleSet], store: Callable[[Appliance, dict[str, Any]], object]) -> int:
    """Show what replacing the rules by ``after_of(rules)`` changes and, unless --dry-run, make
    the change with ``store(app, impact)``; ``verbs``: (done, would do)."""
    with appliance_from(args, recover=False) as app:
        before = current_rules(app.catalog)
        try:
            after = after_of(before)
        except RuleError as err:
            raise UsageError(f"retention rule: {err}") from err
        change = rule_change_impact(app.catalog, before, after, time.time())
        if not args.dry_run:
            store(app, change)
    _report_change(verbs[1] if args.dry_run else verbs[0], name, change, args.dry_run, args.json)
    return EXIT_OK


def cmd_rule_add(args: argparse.Namespace) -> int:
    rule = rule_from_args(args)

    def with_rule(before: RuleSet) -> RuleSet:
        if rule.name in before.by_name and not args.replace:
            raise UsageError(f"retention rule: {rule.name} exists already (use --replace to change it)")
        return rule_set_with(before, rule)

    return _change_rules(args, rule.name, ("saved", "save"), with_rule,
                         lambda app, change: save_rule(app.catalog, app.audit, rule, _actor(), impact=change))


def cmd_rule_list(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        with app.catalog.reader() as reader:
            rules = stored_rules(reader)
        app.audit.append(cli_actor(), ROLE, "retention_rule_list", "retention", "ok")
    if args.json:
        _print_json({"rules": [r.to_dict() for r in rules]})
        return EXIT_OK
    if not rules:
        print("no retention rules: every recording is kept (add a default rule: "
              "recorderd retention rule add default --default --period 10y)")
    for stored in rules:
        rule = stored.rule
        criteria = "default (no other rule matches)" if rule.is_default else json.dumps(rule.criteria())
        print(f"{rule.name:<24} {str(rule.period):>6}  {criteria}")
    return EXIT_OK


def cmd_rule_remove(args: argparse.Namespace) -> int:
    return _change_rules(args, args.name, ("removed", "remove"), lambda before: rule_set_without(before, args.name),
                         lambda app, change: remove_rule(app.catalog, app.audit, args.name, _actor(), impact=change))


# -- holds ------------------------------------------------------------------------------------------

def cmd_hold_add(args: argparse.Namespace) -> int:
    search = {k: getattr(args, k) for k in ("query", "date_from", "date_to", "party", "agent_id", "direction", "tag")
              if getattr(args, k) is not None}
    if args.recording and search:
        raise UsageError("retention hold add: --recording or search criteria, not both")
    with appliance_from(args, recover=False) as app:
        try:
            hold = place_hold(app.catalog, app.audit, _actor(), args.case, args.reason,
                              recording_id=args.recording, search=search or None)
        except (HoldError, UnknownRecording) as err:
            raise UsageError(f"retention hold add: {err}") from err
    if args.json:
        _print_json(hold.to_dict())
    else:
        print(f"legal hold {hold.id} placed (case {hold.case_name}): {hold.items} recording(s) now"
              + (" and whatever the search matches later" if hold.search else ""))
    return EXIT_OK


def cmd_hold_list(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        with app.catalog.reader() as reader:
            holds = list_holds(reader, include_released=args.all)
        app.audit.append(cli_actor(), ROLE, "legal_hold_list", "retention", "ok")
    if args.json:
        _print_json({"holds": [h.to_dict() for h in holds]})
        return EXIT_OK
    for hold in holds:
        what = f"recording {hold.recording_id}" if hold.recording_id else f"search {json.dumps(hold.search)}"
        print(f"{hold.id:>5}  {hold.state:<18} {hold.case_name}: {what} ({hold.items} recording(s)), "
              f"placed by {hold.placed_by} {iso_utc(hold.placed_at)}")
    return EXIT_OK


def cmd_hold_release(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        try:
            if args.approve:
                hold = approve_release(app.catalog, app.audit, _actor(), args.hold_id)
            else:
                hold = request_release(app.catalog, app.audit, _actor(), args.hold_id, args.reason)
        except HoldError as err:
            print(f"recorderd: retention hold release: {err}", file=sys.stderr)
            return EXIT_PROBLEM
    if args.json:
        _print_json(hold.to_dict())
    elif hold.state == "released":
        print(f"legal hold {hold.id} released (requested by {hold.release_requested_by}, approved by "
              f"{hold.released_by})")
    else:
        print(f"release of legal hold {hold.id} requested; it stays in force until another admin approves "
              f"(recorderd retention hold release {hold.id} --approve)")
    return EXIT_OK
