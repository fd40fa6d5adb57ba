"""A griffe extension for the API reference: encdec's reST-flavoured docstrings rendered as Markdown.

The code's docstrings use Sphinx roles (``:meth:`generate```) and doctest lines (``>>> ...``),
which Markdown would show as ":meth:" and as nested block quotes. This rewrites them when the
docs are built, leaving the source alone:

* ``:meth:`~a.b```, ``:class:`x```, ... become code spans (``b`` when the role has ``~``);
* runs of ``>>>`` / ``...`` lines and their output become fenced ``pycon`` blocks, without
  ``# doctest:`` directives;
* a paragraph ending in ``::`` (a reST literal block follows) ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:meth|func|class|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")


def _role(m: re.Match) -> str:
    name = m.group(2)
    return f"`{name.rsplit('.', 1)[-1] if m.group(1) else name}`"


def _doctest_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(DIRECTIVE.sub("", lines[i][len(indent) :]))
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
    return out


def rewrite(text: str) -> str:
    """The Markdown form of one docstring."""
    text = ROLE.sub(_role, text)
    lines = _doctest_blocks(text.splitlines())
    lines = [line[:-1] if line.endswith("::") and not line.lstrip().startswith("```") else line for line in lines]
    return "\n".join(lines)


class RstToMarkdown(griffe.Extension):
    """Rewrite every object's docstring once the tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
