"""``livestream-ingester rules``: the shipped Prometheus rules with another runbook base URL.

Prometheus does not template ``runbook_url`` from outside the rule file (only from the alert's
labels and the global external labels), so, as the public monitoring mixins do, the rules carry
an absolute base URL and are regenerated for a deployment that hosts the runbooks elsewhere.
Every ``runbook_url: <base>#<anchor>`` line gets the new base; the rest of the file (comments
included) is kept byte for byte.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DEFAULT_RUNBOOK_BASE = "https://runbooks.example.com/livestream-ingester/operations.md"
"""Where the shipped ``rules.yml`` points: a placeholder on a reserved domain (RFC 2606), to be
rewritten with ``rules --runbook-base`` to wherever docs/operations.md is published."""

_RUNBOOK = re.compile(
    r"^(?P<key>[ \t]*runbook_url:[ \t]*)(?P<base>[^#\s]+)#(?P<anchor>[\w-]+)[ \t]*$", re.M
)


class RunbookBaseError(ValueError):
    """The base URL cannot serve as an absolute runbook link."""


def check_base(base: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.fragment or "#" in base:
        raise RunbookBaseError(
            f"runbook base must be an absolute http(s) URL without a #fragment: {base!r}"
        )
    return base


def with_runbook_base(rules: str, base: str) -> str:
    """``rules`` (the text of a rule file) with every runbook_url under ``base``."""
    check_base(base)
    return _RUNBOOK.sub(lambda m: f"{m['key']}{base}#{m['anchor']}", rules)


def runbook_urls(rules: str) -> list[str]:
    """Every runbook URL of a rule file's text, in order."""
    return [f"{m['base']}#{m['anchor']}" for m in _RUNBOOK.finditer(rules)]
