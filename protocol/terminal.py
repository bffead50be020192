"""Text for the operator's terminal: whatever an agent wrote is shown, never obeyed.

Status lines, message bodies, questions, log tails and event payloads are written by agents,
and a terminal treats some characters as commands: ESC and CSI sequences erase the screen
or forge lines, OSC sets the window title or the clipboard (OSC 52), a carriage return
overwrites what is on the line, bidi overrides reorder what the operator reads. `visible`
turns every character Python does not call printable (C0 and C1 controls, DEL, format
characters such as bidi overrides and zero-width joiners, line and paragraph separators,
unassigned code points) into the escape `repr` would show (`\\x1b`, `\\u202e`, `\\U000e0041`);
only newline and tab may pass, and only where a field is meant to span lines. `json_text`
does the same for `--json`, whose encoder leaves DEL, C1 controls and U+2028 raw.

`hive ctl` prints through these two functions and nothing else; a test checks that its
output never carries a raw control character, whatever the agents wrote. It lives in
`protocol` because every command-line program of the hive (daemon, `hive ctl`, `hive web`)
logs through `VisibleFormatter`, and none of them may import another's package; it does no
I/O of its own.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

_json = msgspec.json.Encoder()


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    point = ord(ch)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def visible(text: str, *, multiline: bool = False) -> str:
    """`text` with every non-printable character escaped; `multiline` keeps `\\n` and `\\t`."""
    if text.isprintable():
        return text
    keep = "\n\t" if multiline else ""
    return "".join(ch if ch.isprintable() or ch in keep else _escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    point = ord(ch)
    if point < 0x10000:
        return f"\\u{point:04x}"
    point -= 0x10000  # JSON spells an astral code point as a surrogate pair
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def json_text(value: Any) -> str:
    """`value` as one line of JSON in which no character is a terminal control.

    JSON's structure is printable ASCII, so a non-printable character can only be inside a
    string, where `\\uXXXX` means the same thing: the result decodes to the same value.
    """
    text = _json.encode(value).decode()
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


class VisibleFormatter(logging.Formatter):
    """Log records as the terminal should see them: a log line quoting an agent's input
    (a bad frame, a refused name) cannot drive the terminal that `hive up` runs in."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), multiline=True)
