"""The Nagios plugin guidelines' output grammar, strictly, for ``ingester check`` lines.

One line: ``TEXT | PERFDATA`` or just ``TEXT``. The performance data is a space-separated
list of ``'label'=value[UOM];[warn];[crit];[min];[max]``:

* the label holds anything but ``=`` and ``'``, quoted in ``'`` when it holds a space;
* value, min and max are plain decimals (characters ``-0-9.`` only: no exponent, no
  ``inf``, never empty; the guidelines' ``U`` for "unknown" is not used here);
* UOM is one of ``s ms us % B KB MB GB TB c`` or nothing;
* warn and crit are ranges: ``[@][start:][end]`` with ``~`` for minus infinity;
* trailing empty fields may be left out.
"""

from __future__ import annotations

import re

_NUMBER = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_RANGE = rf"@?(?:(?:~|{_NUMBER}):)?(?:{_NUMBER})?"
_LABEL = r"(?:'[^'=]+'|[^'= |]+)"
_UNIT = r"(?:s|ms|us|%|B|KB|MB|GB|TB|c)?"
_TAIL = rf"(?:;{_RANGE}(?:;{_RANGE}(?:;(?:{_NUMBER})?){{0,2}})?)?"
TOKEN = re.compile(rf"{_LABEL}={_NUMBER}{_UNIT}{_TAIL}")


def perfdata_problems(line: str) -> list[str]:
    """Every way ``line`` breaks the grammar (empty when it follows it)."""
    problems = []
    if "\n" in line or "\r" in line:
        problems.append("more than one line")
    text, bar, perf = line.partition("|")
    if not bar:
        return problems
    if "|" in perf:
        problems.append("a second '|'")
    if not perf.startswith(" ") or not text.endswith(" "):
        problems.append("no space around '|'")
    body = perf.strip()
    if not body:
        problems.append("'|' with no performance data after it")
    if "  " in body:
        problems.append("two spaces between tokens")
    for token in re.findall(r"'[^']*'=\S*|\S+", body):
        if not TOKEN.fullmatch(token):
            problems.append(f"token {token!r} breaks the grammar")
    return problems
