"""The subset of YAML that dataset files (Ultralytics' ``data.yaml``) use, read without a
YAML dependency: top-level ``key: value`` pairs whose values are scalars, flow lists or
mappings, or one level of block list or block mapping items."""

from __future__ import annotations

from pathlib import Path

from ._common import AnnotationError, read_text

__all__ = ["parse_simple_yaml"]


def _strip_comment(line: str) -> str:
    quote = ""
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k]
    return line


def _scalar(text: str) -> object:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("", "~", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _split_flow(body: str) -> list[str]:
    parts, quote, current = [], "", ""
    for ch in body:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _value(text: str, where: str) -> object:
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise AnnotationError(f"{where}: unterminated list {text!r}")
        return [_scalar(p) for p in _split_flow(text[1:-1])]
    if text.startswith("{"):
        if not text.endswith("}"):
            raise AnnotationError(f"{where}: unterminated mapping {text!r}")
        out = {}
        for p in _split_flow(text[1:-1]):
            key, sep, val = p.partition(":")
            if not sep:
                raise AnnotationError(f"{where}: expected 'key: value' in {text!r}")
            out[_scalar(key)] = _scalar(val)
        return out
    return _scalar(text)


def parse_simple_yaml(path: str | Path) -> dict[str, object]:
    """The subset of YAML that dataset files use: top-level ``key: value`` pairs whose
    values are scalars, flow lists / mappings (``[a, b]``, ``{0: a}``), or one level of
    block list (``- a``) or block mapping (``0: a``) items.

    Raises:
        AnnotationError: anything else, naming the file and line.
    """
    path = Path(path)
    out: dict[str, object] = {}
    block: str | None = None
    for n, raw in enumerate(read_text(path, "dataset file").splitlines(), start=1):
        line = _strip_comment(raw).rstrip()
        stripped = line.strip()
        where = f"{path}: line {n}"
        if not stripped or stripped in ("---", "..."):
            continue
        if line[0] in " \t":
            if block is None:
                raise AnnotationError(f"{where}: unexpected indented line {raw.strip()!r}")
            current = out[block]
            if stripped.startswith("- ") or stripped == "-":
                if current is None:
                    current = out[block] = []
                if not isinstance(current, list):
                    raise AnnotationError(f"{where}: a list item inside a mapping")
                current.append(_value(stripped[1:], where))
            else:
                key, sep, val = stripped.partition(":")
                if not sep:
                    raise AnnotationError(f"{where}: expected 'key: value', got {stripped!r}")
                if current is None:
                    current = out[block] = {}
                if not isinstance(current, dict):
                    raise AnnotationError(f"{where}: a mapping item inside a list")
                current[_scalar(key)] = _value(val, where)
            continue
        key, sep, val = stripped.partition(":")
        if not sep or not key.strip():
            raise AnnotationError(f"{where}: expected 'key: value', got {stripped!r}")
        key = str(_scalar(key))
        if key in out:
            raise AnnotationError(f"{where}: key {key!r} appears twice")
        if val.strip():
            out[key] = _value(val, where)
            block = None
        else:
            out[key] = None
            block = key
    return out
