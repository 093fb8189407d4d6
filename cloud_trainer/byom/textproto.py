"""Protocol-buffer text format (what a ``.pbtxt`` holds: a TensorFlow text graph, an Object
Detection API label map), read without TensorFlow: enough of the format for those files
(``name: value``, ``name { … }`` / ``name < … >``, ``name: [a, b]``, ``#`` comments), with the
line of every field, so that errors can name ``file:line``."""

from __future__ import annotations

import re
from typing import Any, List, Optional, Tuple, Union

from ..errors import PackageError

# A message: its fields in order, each (name, scalar text or sub-message, line).
Message = List[Tuple[str, Union[str, "Message"], int]]
_TOKEN_RE = re.compile(
    r"""(?P<skip>\s+|\#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}<>\[\]:,;])|(?P<word>[^\s{}<>\[\]:,;"'\#]+)"""
)
_Token = Tuple[str, str, int]  # kind, text, line


def parse(text: str, where: str) -> Message:
    """The message in ``text``; PackageError ``where:line: …`` where it is not text format."""
    tokens: List[_Token] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise PackageError(f"{where}:{line}: cannot read {text[pos : pos + 20]!r}")
        if m.lastgroup != "skip":
            tokens.append((m.lastgroup or "", m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    message, _ = _message(tokens, 0, where, None)
    return message


def _message(tokens: List[_Token], i: int, where: str, close: Optional[str]) -> Tuple[Message, int]:
    out: Message = []
    while i < len(tokens):
        kind, name, line = tokens[i]
        if close is not None and name == close:
            return out, i + 1
        if kind != "word":
            raise PackageError(f"{where}:{line}: expected a field name, found {name!r}")
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        if i >= len(tokens):
            raise PackageError(f"{where}:{line}: field {name!r} has no value")
        opener = tokens[i][1]
        if opener in ("{", "<"):
            sub, i = _message(tokens, i + 1, where, "}" if opener == "{" else ">")
            out.append((name, sub, line))
        elif opener == "[":
            i += 1
            while i < len(tokens) and tokens[i][1] != "]":
                if tokens[i][1] != ",":
                    out.append((name, _unquote(tokens[i][1]), tokens[i][2]))
                i += 1
            i += 1
        else:
            out.append((name, _unquote(opener), line))
            i += 1
        if i < len(tokens) and tokens[i][1] in (",", ";"):
            i += 1
    if close is not None:
        raise PackageError(f"{where}: a message is not closed (missing {close!r})")
    return out, i


def _unquote(token: str) -> str:
    if token[:1] in ("'", '"'):
        return token[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return token


def fields(message: Any, name: str) -> List[Any]:
    """The values of every ``name`` field of ``message`` (sub-messages or scalar texts)."""
    return [v for k, v, _ in message if k == name] if isinstance(message, list) else []


def scalar(message: Any, name: str, default: str = "") -> str:
    """The first scalar ``name`` of ``message``, else ``default``."""
    values = [v for v in fields(message, name) if isinstance(v, str)]
    return values[0] if values else default
