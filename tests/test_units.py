"""systemd/recorderd.service: `systemd-analyze verify` accepts it, and the hardening is all there.

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
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "recorderd.service"

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


def test_every_directive_is_present_once_with_its_value() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    wrong = {key: service.get(key) for key, value in EXPECTED_SERVICE.items() if service.get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {EXPECTED_SERVICE})"


def test_the_unit_is_installable() -> None:
    unit = parse_unit(UNIT.read_text())
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["Description"]


def _verify(unit_text: str, directory: Path, unit: Path = UNIT) -> tuple[int, list[str]]:
    """Run systemd-analyze verify on a copy; returns its exit code and its lines about the unit."""
    runnable = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", unit_text, count=1, flags=re.MULTILINE)
    assert runnable != unit_text
    path = directory / unit.name
    path.write_text(runnable)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in output if unit.name in line or unit.stem in line]


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: install the Debian package systemd"
    code, findings = _verify(UNIT.read_text(), tmp_path)
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


# --- systemd/recorderd-web.service: the console, unprivileged ------------------------------

WEB_UNIT = ROOT / "systemd" / "recorderd-web.service"
EXPECTED_WEB_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd web --config /etc/recorderd/recorderd.toml",
    "User": "recorderd",
    "Group": "recorderd",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": "yes",
    "UMask": "0077",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd",
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


def test_web_unit_has_no_privileges_and_the_hardening() -> None:
    unit = parse_unit(WEB_UNIT.read_text())
    service = unit["Service"]
    wrong = {key: service.get(key) for key, value in EXPECTED_WEB_SERVICE.items() if service.get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {EXPECTED_WEB_SERVICE})"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_web_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, findings = _verify(WEB_UNIT.read_text(), tmp_path, WEB_UNIT)
    assert (code, findings) == (0, [])


# --- systemd/recorderd-backup.service + .timer: the nightly offsite backup run ------------

BACKUP_UNIT = ROOT / "systemd" / "recorderd-backup.service"
BACKUP_TIMER = ROOT / "systemd" / "recorderd-backup.timer"
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


def test_backup_unit_and_timer() -> None:
    service = parse_unit(BACKUP_UNIT.read_text())["Service"]
    wrong = {key: service.get(key) for key, value in EXPECTED_BACKUP_SERVICE.items() if service.get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {EXPECTED_BACKUP_SERVICE})"
    timer = parse_unit(BACKUP_TIMER.read_text())
    assert timer["Timer"]["Unit"] == [BACKUP_UNIT.name]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_backup_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The service with ExecStart runnable (as _verify does) and the timer that starts it, together."""
    runnable = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", BACKUP_UNIT.read_text(), count=1, flags=re.MULTILINE)
    (tmp_path / BACKUP_UNIT.name).write_text(runnable)
    (tmp_path / BACKUP_TIMER.name).write_text(BACKUP_TIMER.read_text())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / BACKUP_UNIT.name),
                           str(tmp_path / BACKUP_TIMER.name)], capture_output=True, text=True, timeout=60)
    findings = [line for line in (done.stdout + done.stderr).splitlines() if "recorderd-backup" in line]
    assert (done.returncode, findings) == (0, [])


# --- systemd/recorderd-retention.service + .timer: the nightly retention run -------------

RETENTION_UNIT = ROOT / "systemd" / "recorderd-retention.service"
RETENTION_TIMER = ROOT / "systemd" / "recorderd-retention.timer"
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


def test_retention_unit_and_timer() -> None:
    service = parse_unit(RETENTION_UNIT.read_text())
    wrong = {key: service["Service"].get(key) for key, value in EXPECTED_RETENTION_SERVICE.items()
             if service["Service"].get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {EXPECTED_RETENTION_SERVICE})"
    assert service["Unit"]["Before"] == ["recorderd-backup.service"]
    timer = parse_unit(RETENTION_TIMER.read_text())
    assert timer["Timer"]["Unit"] == [RETENTION_UNIT.name]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_retention_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    runnable = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", RETENTION_UNIT.read_text(), count=1,
                      flags=re.MULTILINE)
    (tmp_path / RETENTION_UNIT.name).write_text(runnable)
    (tmp_path / RETENTION_TIMER.name).write_text(RETENTION_TIMER.read_text())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / RETENTION_UNIT.name),
                           str(tmp_path / RETENTION_TIMER.name)], capture_output=True, text=True, timeout=60)
    findings = [line for line in (done.stdout + done.stderr).splitlines() if "recorderd-retention" in line]
    assert (done.returncode, findings) == (0, [])


# --- systemd/recorderd-analysis.service: transcription and analytics, lowest priority, no network --

ANALYSIS_UNIT = ROOT / "systemd" / "recorderd-analysis.service"
EXPECTED_ANALYSIS_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd analysis run --config /etc/recorderd/recorderd.toml",
    "Restart": "on-failure",
    "Nice": "19",
    "CPUSchedulingPolicy": "idle",
    "IOSchedulingClass": "idle",
    "User": "recorderd",
    "Group": "recorderd",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd",
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": "AF_UNIX",
    "IPAddressDeny": "any",
    "PrivateTmp": "yes",
    "SystemCallFilter": "@system-service",
}


def test_analysis_unit_is_low_priority_without_network_or_privileges() -> None:
    unit = parse_unit(ANALYSIS_UNIT.read_text())
    service = unit["Service"]
    wrong = {key: service.get(key) for key, value in EXPECTED_ANALYSIS_SERVICE.items() if service.get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {EXPECTED_ANALYSIS_SERVICE})"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_analysis_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, findings = _verify(ANALYSIS_UNIT.read_text(), tmp_path, ANALYSIS_UNIT)
    assert (code, findings) == (0, [])


# --- systemd/recorderd-consent.service: the consent announcer, unprivileged ----------------

CONSENT_UNIT = ROOT / "systemd" / "recorderd-consent.service"
EXPECTED_CONSENT_SERVICE = {
    "Type": "notify",
    "ExecStart": "/usr/bin/recorderd consent run --config /etc/recorderd/recorderd.toml",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "User": "recorderd",
    "Group": "recorderd",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/recorderd",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}


def test_consent_unit_has_no_privileges_and_the_hardening() -> None:
    unit = parse_unit(CONSENT_UNIT.read_text())
    service = unit["Service"]
    wrong = {key: service.get(key) for key, value in EXPECTED_CONSENT_SERVICE.items() if service.get(key) != [value]}
    assert not wrong, f"directives missing, repeated or with another value (want {EXPECTED_CONSENT_SERVICE})"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_consent_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, findings = _verify(CONSENT_UNIT.read_text(), tmp_path, CONSENT_UNIT)
    assert (code, findings) == (0, [])
