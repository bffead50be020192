"""Agent-written text reaches the operator's terminal as text: `hive ctl` never passes on a
control character, and `--json` escapes them all.

The real `hive ctl`, run as a process against a real daemon, after agents wrote what the issue
found reaching the terminal: a window title (`ESC]0;…BEL`), a screen clear (`ESC[2J`), a
forged line (`ESC[1A ESC[2K`, a carriage return), a clipboard write (OSC 52), a C1 CSI, bidi
overrides and a line separator — in a status line, a message, a question and its options, a
reminder, a harness note (an event) and a manager's request (an approval). Hypothesis checks
the two functions every line goes through on any text at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import trio
from hypothesis import given
from hypothesis import strategies as st

from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient
from protocol.terminal import json_text, visible

HOSTILE = (
    "\x1b]0;pwned\x07"  # window title
    "\x1b[2J"  # clear the screen
    "\x1b[1A\x1b[2Kall good\r"  # erase and forge the line above, then overwrite this one
    "\x1b]52;c;cm0gLXJmIH4=\x07"  # write the clipboard
    "\x9b31m"  # C1 CSI
    "\u202egnp.exe\u202c"  # bidi override
    "\u2028tail\x7f"
)
RAW = ("\x1b", "\x07", "\x9b", "\r", "\u202e", "\u202c", "\u2028", "\x7f")


def clean(text: str) -> None:
    found = sorted({repr(ch) for ch in text if ch in RAW or not (ch.isprintable() or ch in "\n\t")})
    assert found == [], f"raw control characters reached the terminal: {found}"


async def hive_ctl(hive: Hive, *args: str) -> str:
    with trio.fail_after(30):
        return await _hive_ctl(hive, *args)


async def _hive_ctl(hive: Hive, *args: str) -> str:
    done = await trio.run_process(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(hive.paths.run_dir)],
        capture_stdout=True,
        capture_stderr=True,
    )
    out = done.stdout.decode()
    clean(out)
    clean(done.stderr.decode())
    return out


async def test_hive_ctl_shows_what_agents_wrote_and_obeys_none_of_it(hive: Hive):
    before = hive.bus.seq
    async with (
        HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice,
        HiveClient.connect(str(hive.paths.agent_sock("boss"))) as boss,
    ):
        await alice.expect(m.SetStatus(text=HOSTILE[:500]), m.Ok)
        await alice.expect(m.Send(to="operator", body=HOSTILE), m.Sent)
        await alice.expect(
            m.Ask(target="operator", question=HOSTILE, options=[HOSTILE[:200], "no"]), m.Asked
        )
        await alice.expect(m.Remind(body=HOSTILE, in_seconds=3600), m.Reminded)
        await alice.expect(m.ReportControl(action="compact", ok=False, detail=HOSTILE), m.Ok)
        await boss.expect(m.RequestSpawn(name="carol", role_description=HOSTILE), m.ApprovalInfo)

    events = ("--since", str(before), "--count", str(hive.bus.seq - before))  # the agents'
    outputs = {
        args: await hive_ctl(hive, *args)
        for args in (
            ("agents",),
            ("status", "alice"),
            ("messages",),
            ("questions",),
            ("reminders",),
            ("approvals",),
            ("approval", "1"),
            ("events", *events),
        )
    }
    human = "\n".join(outputs.values())
    assert "\\x1b]0;pwned\\x07" in human  # shown, escaped
    assert "\\x1b[2J" in human and "\\u202e" in human and "\\x9b31m" in human
    assert "all good\\r" in human  # the carriage return that would overwrite the line

    for args in outputs:
        text = await hive_ctl(hive, *args, "--json")
        for line in text.splitlines():
            json.loads(line)  # every line is JSON
    agents = json.loads(await hive_ctl(hive, "agents", "--json"))
    (alice_row,) = [a for a in agents if a["name"] == "alice"]
    assert alice_row["status_text"] == HOSTILE[:500]  # escaped on the wire, exact once decoded
    messages = json.loads(await hive_ctl(hive, "messages", "--json"))
    assert HOSTILE in [r["body"] for r in messages]
    raw_json = await hive_ctl(hive, "messages", "--json")
    assert "\\u001b]0;pwned\\u0007" in raw_json and "\\u009b" in raw_json
    assert "\\u2028" in raw_json and "\\u202e" in raw_json and "\\u007f" in raw_json


@given(st.text())
def test_visible_leaves_nothing_a_terminal_would_act_on(text: str):
    one_line = visible(text)
    assert one_line.isprintable()
    several = visible(text, multiline=True)
    assert all(ch.isprintable() or ch in "\n\t" for ch in several)
    if text.isprintable():
        assert one_line == text == several  # ordinary text is left alone


@given(
    st.text(), st.lists(st.text(), max_size=3), st.dictionaries(st.text(), st.text(), max_size=3)
)
def test_json_text_is_printable_and_means_the_same(text: str, items: list[str], mapping: dict):
    value = {"text": text, "items": items, "mapping": mapping}
    encoded = json_text(value)
    assert encoded.isprintable()
    assert json.loads(encoded) == value
    assert msgspec.json.decode(encoded) == value


def test_escapes_name_the_character():
    assert visible("\x1b[2J") == "\\x1b[2J"
    assert visible("a\tb\nc\rd") == "a\\tb\\nc\\rd"
    assert visible("a\tb\nc\rd", multiline=True) == "a\tb\nc\\rd"
    assert visible("\u202e\U000e0041") == "\\u202e\\U000e0041"
    assert json_text("\x9b\U000e0041") == '"\\u009b\\udb40\\udc41"'


def test_the_cli_prints_only_through_the_sanitising_functions():
    """`typer.echo` appears in `hive`'s CLI only where the text has been through `visible` or
    `json_text`; every other line goes through `echo`, which applies `visible`."""
    root = Path(__file__).parents[2]
    files = [root / "c0re_priv" / "cli.py", *(root / "c0re_priv" / "ctl").glob("*.py")]
    files.append(root / "c0re_web" / "cli.py")
    for path in files:
        source = path.read_text()
        echoes = [line.strip() for line in source.splitlines() if "typer.echo(" in line]
        assert all("visible(" in line or "json_text(" in line for line in echoes), (path, echoes)
        assert "print(" not in source, path
