"""Griffe extension for the API pages: the docstrings' reST roles and literals (``x``, :class:`~a.B`) become
Markdown code spans, so mkdocstrings shows `B` instead of the raw role."""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?(?:[\w.]*\.)?([^`.]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def rst_to_markdown(text: str) -> str:
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", text))


class RstRoles(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
