"""docs/operations.md stays true: every panel, rule and alert is described, examples parse."""

from __future__ import annotations

import re
import shlex

from tests.stack import DASHBOARDS, OPERATIONS, alerts, dashboard, panels, recordings
from workers.cli import parser

TEXT = OPERATIONS.read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The text under a ``### heading`` up to the next heading of any level."""
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#)", TEXT + "\n#", re.M | re.S)
    assert match, f"no section {heading}"
    return match.group(1)


def test_every_panel_is_described_under_its_dashboard() -> None:
    for path in DASHBOARDS:
        board = dashboard(path)
        heading = board["title"].removeprefix("Livestream: ").capitalize()
        text = section(heading)
        assert f"`{board['uid']}`" in text
        for panel in panels(board):
            assert panel["title"] in text, f"{path.name}: {panel['title']} is not described"


def test_every_alert_has_a_runbook_and_a_row_in_the_table() -> None:
    for rule in alerts():
        name = rule["alert"]
        body = section(name)
        for part in ("**Meaning.**", "**Quiet when**", "**What to do.**"):
            assert part in body, f"{name}: no {part}"
        severity = rule["labels"]["severity"]
        assert f"| [{name}](#{name.lower()}) | {severity} |" in TEXT


def test_every_recording_rule_is_listed() -> None:
    for rule in recordings():
        assert f"| `{rule['record']}` |" in TEXT


def test_command_examples_parse() -> None:
    for block in re.findall(r"```sh\n(.*?)```", TEXT, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "livestream-ingester":
                parser().parse_args(words[1:])
            elif words:
                assert words[:2] == ["docker", "compose"], line
