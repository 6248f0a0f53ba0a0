"""Griffe extension for the docs build: the docstrings of pyrobayes are Google style with a
few reST habits (``:func:`~a.b```, ``:math:`x```, ``.. math::`` blocks, bare doctests), so
that they read well in ``help()`` and run under ``doctest``. This turns those habits into
Markdown for mkdocstrings:

* ``:func:`~pyrobayes.x.f``` / ``:class:`` / ``:mod:`` / ``:meth:`` / ``:attr:`` /
  ``:data:`` / ``:exc:`` become cross-references (``[`f`][pyrobayes.x.f]``), so that a
  reference to a name that does not exist fails the strict build;
* ``:math:`...``` becomes ``$...$`` and a ``.. math::`` block becomes ``$$ ... $$``
  (rendered by pymdownx.arithmatex);
* a doctest that starts at paragraph level (not indented under ``Example::``) is fenced
  as a ``pycon`` code block, so its ``x["key"]`` is not read as a Markdown link.
"""

from __future__ import annotations

import importlib
import inspect
import re
from functools import cache
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(func|class|mod|meth|attr|data|exc|obj):`(~?)([\w.]+)(\(\))?`")
_MATH = re.compile(r":math:`([^`]+)`")


@cache
def canonical(target: str) -> str:
    """Where the object named ``target`` is defined: a re-export such as ``pyrobayes.fit``
    (or ``pyrobayes.infer.fit``, which static analysis reads as the submodule it shadows)
    becomes ``pyrobayes.infer.fit.fit``, the identifier the API pages register."""
    parts = target.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
        else:
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ImportError:
                return target  # let the strict build report it
    if inspect.ismodule(obj):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and module.startswith("pyrobayes") and qualname:
        return f"{module}.{qualname}"
    return target


def _role(m: re.Match) -> str:
    kind, short, target = m.group(1), m.group(2), m.group(3)
    shown = target.rsplit(".", 1)[-1] if short else target
    if not target.startswith("pyrobayes."):
        return f"`{shown}`"  # outside the project: no page to link to
    if kind in ("func", "meth"):
        shown += "()"
    return f"[`{shown}`][{canonical(target)}]"


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body = [stripped[len(".. math::") :].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
                body.append(lines[i].strip())
                i += 1
            text = " ".join(b for b in body if b)
            out += [f"{indent}$$", f"{indent}{text}", f"{indent}$$", ""]
            continue
        out.append(line)
        i += 1
    return out


def _fence_doctests(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        out.append(lines[i])
        i += 1
    return out


def convert(text: str) -> str:
    """The Markdown form of one docstring."""
    lines = _fence_doctests(_math_blocks(text.splitlines()))
    text = "\n".join(lines)
    text = _ROLE.sub(_role, text)
    return _MATH.sub(lambda m: f"${m.group(1)}$", text)


class RestToMarkdown(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
