"""The announcer registers to the PBX as an extension (consent.registrar): a SIPp registrar
challenges the REGISTER (RFC 3261 §10, digest §22) and accepts it only with a response computed
from the configured password — SIPp's verifyauth checks the digest. The appliance has no prompt
files yet: the announcer makes them from their texts at its first start."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from recorderd.cli import main
from tests.system.test_consent_announcer import ENV, free_udp_port, set_option

PASSWORD = "s3cret-extension-pw"
REGISTRAR = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="registrar">
  <recv request="REGISTER"/>
  <send><![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]reg[call_number]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="bank.example", nonce="[pid]n[call_number]", algorithm=MD5
Content-Length: 0

]]></send>
  <recv request="REGISTER">
    <action>
      <verifyauth assign_to="valid" username="consent" password="%s"/>
      <ereg regexp="sip:consent@127\\.0\\.0\\.1" search_in="hdr" header="To:" check_it="true" assign_to="aor"/>
    </action>
  </recv>
  <nop test="valid" next="ok"/>
  <send><![CDATA[
SIP/2.0 403 Forbidden
[last_Via:]
[last_From:]
[last_To:];tag=[pid]reg[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <nop><action><exec int_cmd="stop_now"/></action></nop>
  <label id="ok"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]reg[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Contact:];expires=300
X-Registered-AOR: [$aor]
Content-Length: 0

]]></send>
</scenario>
"""


def test_announcer_registers_with_digest_auth(tmp_path: Path) -> None:
    assert shutil.which("sipp"), "sipp (Debian sip-tester) is required"
    registrar_port, ann_port = free_udp_port(), free_udp_port()
    (tmp_path / "registrar.xml").write_text(REGISTRAR % PASSWORD)
    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    password_file = tmp_path / "box" / "extension.pw"
    password_file.write_text(PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    text = config.read_text()
    for key, value in (("listen", f'"127.0.0.1:{ann_port}"'), ("prompt_dir", '"prompts"'),
                       ("registrar", f'"sip:127.0.0.1:{registrar_port}"'), ("account", '"sip:consent@127.0.0.1"'),
                       ("password_file", f'"{password_file}"')):
        text = set_option(text, "consent", key, value)
    config.write_text(text)
    registrar = subprocess.Popen(["sipp", "-sf", "registrar.xml", "-i", "127.0.0.1", "-p", str(registrar_port),
                                  "-m", "1", "-nostdin", "-timeout", "20", "-timeout_error"],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(tmp_path / "announcer.log", "w")  # noqa: SIM115 - closed below
    announcer = subprocess.Popen([sys.executable, "-m", "recorderd", "--config", str(config), "consent", "run"],
                                 stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        registered = registrar.wait(timeout=30)
        deadline = time.monotonic() + 10
        while "registration: 200" not in (tmp_path / "announcer.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        announcer.send_signal(signal.SIGTERM)
        stopped = announcer.wait(timeout=30)
        log.close()
        if registrar.poll() is None:
            registrar.kill()
    output = (tmp_path / "announcer.log").read_text()
    assert registered == 0, output[-2000:]            # digest verified, AOR right, 200 sent
    assert "registration: 200" in output, output[-2000:]
    assert stopped == 0
    assert PASSWORD not in output
    # first use: the prompt directory was empty, the announcer spoke the prompts from their texts
    assert "prompt made from its text" in output
    assert sorted(p.name for p in (tmp_path / "box" / "prompts").iterdir()) == [
        "en.16k.wav", "en.8k.wav", "zh.16k.wav", "zh.8k.wav"]
