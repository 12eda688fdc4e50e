"""systemd/*.service (+ .timer): `systemd-analyze verify` accepts each unit, and its hardening is all there.

`systemd-analyze verify` refuses a unit whose ExecStart binary does not exist, and
/usr/bin/recorderd exists only once the Debian package is installed. The test therefore verifies
a copy of the unit in a temporary directory with only the ExecStart program replaced by
/bin/true (its arguments and every other line unchanged). `--man=no` skips looking up
Documentation= man pages, which depends on man-db rather than on the unit.

verify exits 0 even for some mistakes (an unknown key, an unparsable value: systemd logs
"..., ignoring." and carries on), so the test also requires that it printed nothing about
the unit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "recorderd.service"

EXPECTED_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd run --config /etc/recorderd/recorderd.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "TimeoutStopSec": "30",
    "User": "recorderd",
    "Group": "recorderd",
    "AmbientCapabilities": "CAP_NET_RAW CAP_NET_ADMIN",
    "CapabilityBoundingSet": "CAP_NET_RAW CAP_NET_ADMIN",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_PACKET AF_NETLINK",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "no",
    "SystemCallArchitectures": "native",
    "StateDirectory": "recorderd",
    "ConfigurationDirectory": "recorderd",
}


# what the unprivileged long-running services (web, analysis, consent) all have: their own
# user and group, no capabilities at all, a read-only file system but for the state directory
UNPRIVILEGED = {
    "User": "recorderd",
    "Group": "recorderd",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd",
}

EXPECTED_WEB_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd web --config /etc/recorderd/recorderd.toml",
    **UNPRIVILEGED,
    "UMask": "0077",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}

EXPECTED_BACKUP_SERVICE = {
    "Type": "oneshot",
    "ExecStart": "/usr/bin/recorderd backup run --config /etc/recorderd/recorderd.toml",
    "User": "recorderd",
    "CapabilityBoundingSet": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}

EXPECTED_RETENTION_SERVICE = {
    "Type": "oneshot",
    "ExecStart": "/usr/bin/recorderd --config /etc/recorderd/recorderd.toml retention apply",
    "User": "recorderd",
    "CapabilityBoundingSet": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd /etc/recorderd/keys",
    "RestrictAddressFamilies": "AF_UNIX",
    "IPAddressDeny": "any",
}

# transcription and analytics: lowest priority, no network
EXPECTED_ANALYSIS_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd analysis run --config /etc/recorderd/recorderd.toml",
    "Restart": "on-failure",
    "Nice": "19",
    "CPUSchedulingPolicy": "idle",
    "IOSchedulingClass": "idle",
    **UNPRIVILEGED,
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": "AF_UNIX",
    "IPAddressDeny": "any",
    "PrivateTmp": "yes",
    "SystemCallFilter": "@system-service",
}

EXPECTED_CONSENT_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd consent run --config /etc/recorderd/recorderd.toml",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    **UNPRIVILEGED,
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}


@dataclass(frozen=True)
class UnitCase:
    """One shipped service: the [Service] directives it must have, and how it gets started."""

    unit: Path
    service: dict[str, str]
    wanted_by: str | None = "multi-user.target"  # its [Install] WantedBy; None when a timer starts it
    timer: Path | None = None  # the .timer that starts it (Unit=, Persistent=true, timers.target)
    unit_section: dict[str, list[str]] = field(default_factory=dict)  # [Unit] directives it must have


UNIT_CASES = [
    UnitCase(UNIT, EXPECTED_SERVICE),
    UnitCase(SYSTEMD / "recorderd-web.service", EXPECTED_WEB_SERVICE),  # the console, unprivileged
    UnitCase(SYSTEMD / "recorderd-backup.service", EXPECTED_BACKUP_SERVICE, wanted_by=None,
             timer=SYSTEMD / "recorderd-backup.timer"),  # the nightly offsite backup run
    UnitCase(SYSTEMD / "recorderd-retention.service", EXPECTED_RETENTION_SERVICE, wanted_by=None,
             timer=SYSTEMD / "recorderd-retention.timer",  # the nightly retention run, before the backup
             unit_section={"Before": ["recorderd-backup.service"]}),
    UnitCase(SYSTEMD / "recorderd-analysis.service", EXPECTED_ANALYSIS_SERVICE),
    UnitCase(SYSTEMD / "recorderd-consent.service", EXPECTED_CONSENT_SERVICE),  # the consent announcer
]
by_unit = pytest.mark.parametrize("case", UNIT_CASES, ids=lambda case: case.unit.name)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value given (systemd.syntax(7): '#'/';' comments, '\\' joins lines)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(" ".join(value.split()))
    return sections


@by_unit
def test_every_directive_is_present_once_with_its_value(case: UnitCase) -> None:
    unit = parse_unit(case.unit.read_text())
    service = unit["Service"]
    wrong = {key: service.get(key) for key, value in case.service.items() if service.get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {case.service})"
    for key, values in case.unit_section.items():
        assert unit["Unit"].get(key) == values, f"[Unit] {key}"


@by_unit
def test_the_unit_is_installable(case: UnitCase) -> None:
    unit = parse_unit(case.unit.read_text())
    assert unit["Unit"]["Description"]
    if case.wanted_by is not None:
        assert unit["Install"]["WantedBy"] == [case.wanted_by]
    if case.timer is not None:
        timer = parse_unit(case.timer.read_text())
        assert timer["Timer"]["Unit"] == [case.unit.name]
        assert timer["Timer"]["Persistent"] == ["true"]
        assert timer["Install"]["WantedBy"] == ["timers.target"]


def _verify(unit_text: str, directory: Path, unit: Path = UNIT,
            companions: tuple[Path, ...] = ()) -> tuple[int, list[str]]:
    """Run systemd-analyze verify on a copy (with copies of `companions`, e.g. its timer, verified
    together); returns its exit code and its lines about the unit."""
    runnable = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", unit_text, count=1, flags=re.MULTILINE)
    assert runnable != unit_text
    path = directory / unit.name
    path.write_text(runnable)
    paths = [path]
    for companion in companions:
        paths.append(directory / companion.name)
        paths[-1].write_text(companion.read_text())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in output if unit.name in line or unit.stem in line]


@by_unit
def test_systemd_analyze_verify_passes(tmp_path: Path, case: UnitCase) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: install the Debian package systemd"
    companions = (case.timer,) if case.timer is not None else ()
    code, findings = _verify(case.unit.read_text(), tmp_path, case.unit, companions)
    assert (code, findings) == (0, [])


@pytest.mark.parametrize(("good", "bad"), [
    ("ProtectSystem=strict", "ProtectSystem=strcit"),  # exit 0 but "Failed to parse ..., ignoring"
    ("WatchdogSec=30", "WatchdogSecs=30"),             # exit 0 but "Unknown key ..."
    ("[Service]", "[Servce]"),                         # exit 1
])
def test_verify_would_catch_a_broken_unit(tmp_path: Path, good: str, bad: str) -> None:
    """The check above is not vacuous: the same run finds a typo."""
    text = UNIT.read_text()
    broken = re.sub(rf"^{re.escape(good)}$", bad, text, flags=re.MULTILINE)
    assert broken.count(bad) == 1
    code, findings = _verify(broken, tmp_path)
    assert code != 0 or findings
