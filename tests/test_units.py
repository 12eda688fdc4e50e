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


def _verify(unit_text: str, directory: Path) -> tuple[int, list[str]]:
    """Run systemd-analyze verify on a copy; returns its exit code and its lines about the unit."""
    runnable = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", unit_text, count=1, flags=re.MULTILINE)
    assert runnable != unit_text
    path = directory / UNIT.name
    path.write_text(runnable)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in output if UNIT.name in line or UNIT.stem in line]


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
