"""QA review: assignments of recordings to reviewers, rubric scores, cross-reviews.

Tables ``qa_assignments`` and ``qa_scores`` (storage/migrations.py, migration 3). The flow:

1. An admin assigns a finished recording to a reviewer, by hand or by a sample per agent
   (analysis/risk.py ``riskiest_per_agent``: riskiest first, a share by chance; then
   :func:`distribute` over the reviewers). An assignment is
   what lets a QA reviewer open a recording at all (webadmin/access.py).
2. The reviewer scores it against the rubric (:class:`Rubric`; default compliance 30,
   communication 30, resolution 20, experience 20: points out of 100) with a comment. A score
   is final: ``qa_scores`` is append-only, and the assignment becomes ``scored``.
3. An admin may give a score to a second reviewer for a cross-review: the second reviewer
   scores the same recording with the first score's rubric, without seeing it; afterwards both
   and their difference per criterion are shown (:func:`compare`).

Distribution is a pure function: the random generator comes from the caller (an
explicit :class:`random.Random`), so a test fixes the seed and an admin's run is reproducible
from the seed written in its audit entry.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import apsw

from storage.catalog import Catalog, CatalogError, CatalogReader, UnknownRecording, to_epoch

DEFAULT_RUBRIC = ("compliance=30", "communication=30", "resolution=20", "experience=20")
ASSIGNABLE_STATES = ("complete", "partial")
ASSIGNMENT_STATES = ("open", "scored", "withdrawn")
_ASSIGNMENT_COLUMNS = ("id, recording_id, reviewer, kind, cross_of, method, assigned_by, assigned_at, "
                       "state, closed_at")
_SCORE_FIELDS = ("id", "assignment_id", "recording_id", "reviewer", "rubric", "points", "total", "max_total",
                 "comment", "scored_at")
_SCORE_COLUMNS = ", ".join(_SCORE_FIELDS)


class ReviewError(CatalogError):
    """A review operation that cannot be done; the message says why (shown to the user)."""


# ---------------------------------------------------------------------------------------------
# the rubric


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    max_points: int


@dataclass(frozen=True, slots=True)
class Rubric:
    """What a score is made of: criteria, each scored 0..max_points (whole points)."""

    criteria: tuple[Criterion, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Rubric:
        """From ``["compliance=30", ...]`` (the ``[review] rubric`` setting); ValueError naming
        the bad entry."""
        criteria: list[Criterion] = []
        for entry in entries:
            name, sep, points = entry.partition("=")
            name = name.strip()
            try:
                max_points = int(points.strip())
            except ValueError:
                max_points = 0
            if not sep or not name or max_points < 1:
                raise ValueError(f"{entry!r} is not CRITERION=MAX_POINTS (a whole number of points >= 1)")
            if any(c.name == name for c in criteria):
                raise ValueError(f"criterion {name!r} is listed twice")
            criteria.append(Criterion(name, max_points))
        if not criteria:
            raise ValueError("the rubric needs at least one criterion")
        return cls(tuple(criteria))

    @classmethod
    def from_json(cls, text: str) -> Rubric:
        return cls(tuple(Criterion(str(name), int(points)) for name, points in json.loads(text)))

    def to_json(self) -> str:
        return json.dumps([[c.name, c.max_points] for c in self.criteria], separators=(",", ":"))

    @property
    def max_total(self) -> int:
        return sum(c.max_points for c in self.criteria)

    def check(self, points: Mapping[str, Any]) -> dict[str, int]:
        """Points per criterion as whole numbers in range; ValueError naming what is wrong."""
        names = {c.name for c in self.criteria}
        unknown = sorted(set(points) - names)
        if unknown:
            raise ValueError(f"not in the rubric: {', '.join(unknown)}")
        checked: dict[str, int] = {}
        for criterion in self.criteria:
            given = points.get(criterion.name)
            if given is None or (isinstance(given, str) and not given.strip()):
                raise ValueError(f"{criterion.name}: no points given")
            try:
                value = int(str(given).strip())
            except ValueError:
                raise ValueError(f"{criterion.name}: {given!r} is not a whole number") from None
            if not 0 <= value <= criterion.max_points:
                raise ValueError(f"{criterion.name}: {value} is outside 0-{criterion.max_points}")
            checked[criterion.name] = value
        return checked


# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True, slots=True)
class Assignment:
    id: int
    recording_id: str
    reviewer: str
    kind: str           # review | cross
    cross_of: int | None
    method: str         # manual | sample
    assigned_by: str
    assigned_at: float
    state: str          # open | scored | withdrawn
    closed_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Score:
    id: int
    assignment_id: int
    recording_id: str
    reviewer: str
    rubric: Rubric
    points: dict[str, int]
    total: float
    max_total: float
    comment: str
    scored_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "assignment_id": self.assignment_id, "recording_id": self.recording_id,
                "reviewer": self.reviewer, "rubric": [[c.name, c.max_points] for c in self.rubric.criteria],
                "points": self.points, "total": self.total, "max_total": self.max_total,
                "comment": self.comment, "scored_at": self.scored_at}


@dataclass(frozen=True, slots=True)
class Comparison:
    """A cross-review beside the score it reviews: ``difference`` is second − first."""

    first: Score
    second: Score
    difference: dict[str, int]
    total_difference: float

    def largest_gap(self) -> int:
        return max((abs(d) for d in self.difference.values()), default=0)


def compare(first: Score, second: Score) -> Comparison:
    """Criterion by criterion (the first score's rubric order), second minus first."""
    difference = {c.name: second.points.get(c.name, 0) - first.points.get(c.name, 0) for c in first.rubric.criteria}
    return Comparison(first, second, difference, second.total - first.total)


def _assignment(values: tuple[Any, ...]) -> Assignment:
    return Assignment(*values)


def _score(values: tuple[Any, ...]) -> Score:
    sid, aid, rid, reviewer, rubric, points, total, max_total, comment, scored_at = values
    return Score(sid, aid, rid, reviewer, Rubric.from_json(rubric), json.loads(points), total, max_total,
                 comment, scored_at)


# ---------------------------------------------------------------------------------------------
# sampling (pure)


def distribute(sampled: Mapping[str, Sequence[str]], reviewers: Sequence[str],
               rng: random.Random) -> list[tuple[str, str]]:
    """(recording_id, reviewer) pairs: the sampled recordings dealt out over the reviewers in a
    shuffled round robin, so every reviewer gets the same number (±1) and no reviewer gets all
    of one agent's calls when there are several reviewers."""
    pool = sorted(set(reviewers))
    if not pool:
        raise ValueError("no reviewers to distribute to")
    rng.shuffle(pool)
    recordings = [rid for agent in sorted(sampled) for rid in sampled[agent]]
    return [(rid, pool[i % len(pool)]) for i, rid in enumerate(recordings)]


# ---------------------------------------------------------------------------------------------
# reads (on a CatalogReader's connection)


def _rows(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(sql, tuple(params)).fetchall()


def _query(reader: CatalogReader, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return _rows(reader.conn, sql, params)


def get_assignment(reader: CatalogReader, assignment_id: int) -> Assignment | None:
    found = _query(reader, f"SELECT {_ASSIGNMENT_COLUMNS} FROM qa_assignments WHERE id = ?", (assignment_id,))  # nosec B608  # column names from the _ASSIGNMENT_COLUMNS constant; every value is a ? parameter
    return _assignment(found[0]) if found else None


def assignments(reader: CatalogReader, *, reviewer: str | None = None, recording_id: str | None = None,
                state: str | None = None, limit: int = 200, offset: int = 0) -> list[Assignment]:
    """Assignments matching every filter given, newest first."""
    clauses, params = [], []
    for column, value in (("reviewer", reviewer), ("recording_id", recording_id), ("state", state)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return [_assignment(v) for v in _query(
        reader, f"SELECT {_ASSIGNMENT_COLUMNS} FROM qa_assignments {where} ORDER BY id DESC LIMIT ? OFFSET ?",  # nosec B608  # _ASSIGNMENT_COLUMNS and fixed column names; every value is a ? parameter
        [*params, limit, offset])]


def is_assigned(reader: CatalogReader, reviewer: str, recording_id: str) -> bool:
    """Whether ``reviewer`` holds an assignment (open or scored, not withdrawn) for the recording."""
    return bool(_query(reader, "SELECT 1 FROM qa_assignments WHERE reviewer = ? AND recording_id = ? "
                               "AND state != 'withdrawn' LIMIT 1", (reviewer, recording_id)))


def get_score(reader: CatalogReader, score_id: int) -> Score | None:
    found = _query(reader, f"SELECT {_SCORE_COLUMNS} FROM qa_scores WHERE id = ?", (score_id,))  # nosec B608  # column names from the _SCORE_COLUMNS constant; every value is a ? parameter
    return _score(found[0]) if found else None


def score_of_assignment(reader: CatalogReader, assignment_id: int) -> Score | None:
    found = _query(reader, f"SELECT {_SCORE_COLUMNS} FROM qa_scores WHERE assignment_id = ?", (assignment_id,))  # nosec B608  # column names from the _SCORE_COLUMNS constant; every value is a ? parameter
    return _score(found[0]) if found else None


def scores_for(reader: CatalogReader, recording_id: str) -> list[Score]:
    """Every score given for a recording, oldest first."""
    return [_score(v) for v in _query(reader, f"SELECT {_SCORE_COLUMNS} FROM qa_scores WHERE recording_id = ? "  # nosec B608  # column names from the _SCORE_COLUMNS constant; every value is a ? parameter
                                              f"ORDER BY id", (recording_id,))]


def cross_reviews_of(reader: CatalogReader, score_id: int) -> list[Score]:
    """The scores given in cross-review of ``score_id``."""
    return [_score(v) for v in _query(
        reader, f"SELECT {', '.join('s.' + c for c in _SCORE_FIELDS)} FROM qa_scores s "  # nosec B608  # column names from the _SCORE_FIELDS constant; every value is a ? parameter
                f"JOIN qa_assignments a ON a.id = s.assignment_id WHERE a.cross_of = ? ORDER BY s.id", (score_id,))]


def sample_candidates(reader: CatalogReader, date_from: Any, date_to: Any) -> list[tuple[str, str]]:
    """(recording_id, agent_id) of finished recordings with an agent, started in
    [date_from, date_to), that have no review assignment yet (withdrawn ones do not count)."""
    low, high = to_epoch(date_from), to_epoch(date_to)
    if low is None or high is None or high <= low:
        raise ValueError("a sample needs a date range (from before to)")
    marks = ", ".join("?" * len(ASSIGNABLE_STATES))
    return [(str(rid), str(agent)) for rid, agent in _query(
        reader,
        f"SELECT r.recording_id, r.agent_id FROM recordings r WHERE r.id >= ? AND r.id < ? "  # nosec B608  # only ? placeholders are joined in; every value is a ? parameter
        f"AND r.agent_id IS NOT NULL AND r.state IN ({marks}) AND NOT EXISTS ("
        f"SELECT 1 FROM qa_assignments a WHERE a.recording_id = r.recording_id AND a.kind = 'review' "
        f"AND a.state != 'withdrawn') ORDER BY r.id",
        (round(low * 1000), round(high * 1000), *ASSIGNABLE_STATES))]


# ---------------------------------------------------------------------------------------------
# writes (through the catalog's writer thread)


class ReviewStore:
    """Writes of the QA review tables; every method is one transaction."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def assign(self, recording_id: str, reviewer: str, assigned_by: str, *, method: str = "manual") -> Assignment:
        """Give a finished recording to a reviewer; ReviewError when it is not assignable or the
        reviewer already holds it."""
        return self.assign_many([(recording_id, reviewer)], assigned_by, method=method)[0]

    def assign_many(self, pairs: Iterable[tuple[str, str]], assigned_by: str, *,
                    method: str = "manual") -> list[Assignment]:
        """Several assignments in one transaction (a sample run): all or none."""
        batch, now = list(pairs), self.catalog.clock()

        def job(conn: apsw.Connection) -> list[Assignment]:
            made = []
            for recording_id, reviewer in batch:
                self._check_assignable(conn, recording_id, reviewer, "review")
                made.append(self._insert(conn, recording_id, reviewer, "review", None, method, assigned_by, now))
            return made

        return self.catalog.writer.call(job)

    def assign_cross(self, score_id: int, reviewer: str, assigned_by: str) -> Assignment:
        """Give a score to a second reviewer for a cross-review."""
        now = self.catalog.clock()

        def job(conn: apsw.Connection) -> Assignment:
            found = _rows(conn, "SELECT recording_id, reviewer FROM qa_scores WHERE id = ?", (score_id,))
            if not found:
                raise ReviewError(f"no score {score_id}")
            recording_id, first_reviewer = found[0]
            if reviewer == first_reviewer:
                raise ReviewError(f"{reviewer} gave score {score_id}: a cross-review needs a second reviewer")
            self._check_assignable(conn, recording_id, reviewer, "cross")
            return self._insert(conn, recording_id, reviewer, "cross", score_id, "manual", assigned_by, now)

        return self.catalog.writer.call(job)

    def withdraw(self, assignment_id: int) -> Assignment:
        """Take back an open assignment (the reviewer loses access unless they hold another)."""
        now = self.catalog.clock()

        def job(conn: apsw.Connection) -> Assignment:
            current = self._get(conn, assignment_id)
            if current.state != "open":
                raise ReviewError(f"assignment {assignment_id} is {current.state}: only open ones can be withdrawn")
            conn.execute("UPDATE qa_assignments SET state = 'withdrawn', closed_at = ? WHERE id = ?",
                         (now, assignment_id))
            return self._get(conn, assignment_id)

        return self.catalog.writer.call(job)

    def score(self, assignment_id: int, reviewer: str, points: Mapping[str, Any], comment: str,
              rubric: Rubric) -> Score:
        """The reviewer's score for an open assignment of theirs. A cross-review is scored with
        the rubric of the score it reviews (``rubric`` applies to first reviews only)."""
        now = self.catalog.clock()

        def job(conn: apsw.Connection) -> Score:
            current = self._get(conn, assignment_id)
            if current.reviewer != reviewer:
                raise ReviewError(f"assignment {assignment_id} belongs to another reviewer")
            if current.state != "open":
                raise ReviewError(f"assignment {assignment_id} is {current.state}: it cannot be scored")
            used = rubric
            if current.cross_of is not None:
                used = Rubric.from_json(_rows(conn, "SELECT rubric FROM qa_scores WHERE id = ?",
                                              (current.cross_of,))[0][0])
            try:
                checked = used.check(points)
            except ValueError as err:
                raise ReviewError(str(err)) from err
            conn.execute(f"INSERT INTO qa_scores ({', '.join(_SCORE_FIELDS[1:])}) "  # nosec B608  # column names from the _SCORE_FIELDS constant and ? placeholders; every value is a ? parameter
                         f"VALUES ({', '.join('?' * (len(_SCORE_FIELDS) - 1))})",
                         (assignment_id, current.recording_id, reviewer, used.to_json(),
                          json.dumps(checked, separators=(",", ":")), float(sum(checked.values())),
                          float(used.max_total), comment.strip(), now))
            score_id = conn.last_insert_rowid()
            conn.execute("UPDATE qa_assignments SET state = 'scored', closed_at = ? WHERE id = ?", (now, assignment_id))
            return _score(_rows(conn, f"SELECT {_SCORE_COLUMNS} FROM qa_scores WHERE id = ?", (score_id,))[0])  # nosec B608  # column names from the _SCORE_COLUMNS constant; every value is a ? parameter

        return self.catalog.writer.call(job)

    # -- inside the writer's transaction

    @staticmethod
    def _get(conn: apsw.Connection, assignment_id: int) -> Assignment:
        found = _rows(conn, f"SELECT {_ASSIGNMENT_COLUMNS} FROM qa_assignments WHERE id = ?", (assignment_id,))  # nosec B608  # column names from the _ASSIGNMENT_COLUMNS constant; every value is a ? parameter
        if not found:
            raise ReviewError(f"no assignment {assignment_id}")
        return _assignment(found[0])

    @staticmethod
    def _check_assignable(conn: apsw.Connection, recording_id: str, reviewer: str, kind: str) -> None:
        if not reviewer.strip():
            raise ReviewError("no reviewer named")
        found = _rows(conn, "SELECT state FROM recordings WHERE recording_id = ?", (recording_id,))
        if not found:
            raise UnknownRecording(recording_id)
        if found[0][0] not in ASSIGNABLE_STATES:
            raise ReviewError(f"recording {recording_id} is {found[0][0]}: only finished recordings are reviewed")
        if conn.execute("SELECT 1 FROM qa_assignments WHERE recording_id = ? AND reviewer = ? AND kind = ? "
                        "AND state != 'withdrawn'", (recording_id, reviewer, kind)).fetchall():
            raise ReviewError(f"{reviewer} already has a {kind} of recording {recording_id}")

    @staticmethod
    def _insert(conn: apsw.Connection, recording_id: str, reviewer: str, kind: str, cross_of: int | None,
                method: str, assigned_by: str, now: float) -> Assignment:
        conn.execute("INSERT INTO qa_assignments (recording_id, reviewer, kind, cross_of, method, assigned_by, "
                     "assigned_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (recording_id, reviewer, kind, cross_of, method, assigned_by, now))
        return ReviewStore._get(conn, conn.last_insert_rowid())
