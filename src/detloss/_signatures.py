"""Module constructors read from their function's signature (docs/conventions.md).

A loss Module or a matcher Module stores the options of one function. Its constructor's
signature is derived from that function's, so names, defaults and annotations are
written once, in the function, and cannot drift apart:

- :func:`options_signature` — a function's options as a constructor takes them;
- :func:`keyword_option` — one more keyword-only option of the Module's own;
- :func:`constructor_signature` — what ``inspect.signature`` shows for the Module: its
  own leading inputs, then the function's options;
- :func:`bind_options` — bind a constructor call to such a signature, defaults applied,
  with the Module's name in the error of a wrong call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["bind_options", "constructor_signature", "keyword_option", "options_signature"]


def options_signature(
    function: Callable[..., Any],
    call_args: tuple[str, ...],
    positional: int = 0,
    defaults: dict[str, object] | None = None,
) -> inspect.Signature:
    """The options of ``function``, as its Module's constructor takes them: its
    parameters less the per-call ``call_args``, the first ``positional`` of them also
    accepted by position, and ``defaults`` replacing the function's where the Module's
    differ on purpose.

    Example:
        >>> def f(x, *, alpha=0.25, gamma=2.0): ...
        >>> options_signature(f, ("x",), positional=1)
        <Signature (alpha=0.25, *, gamma=2.0)>
    """
    parameters = inspect.signature(function).parameters
    missing = [name for name in call_args if name not in parameters]
    if missing:
        raise TypeError(f"{function.__name__} has no parameters {missing}")
    defaults = defaults or {}
    kept = []
    for p in parameters.values():
        if p.name in call_args:
            continue
        if len(kept) < positional:
            p = p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if p.name in defaults:
            default = defaults[p.name]
            widened = default is None and p.default is not None and isinstance(p.annotation, str)
            p = p.replace(
                default=default, annotation=f"{p.annotation} | None" if widened else p.annotation
            )
        kept.append(p)
    return inspect.Signature(kept)


def keyword_option(name: str, default: object, annotation: str) -> inspect.Parameter:
    """A keyword-only constructor option that the function does not take.

    Example:
        >>> keyword_option("solver", "auto", "str")
        <Parameter "solver: 'str' = 'auto'">
    """
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def bind_options(
    signature: inspect.Signature, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``signature.bind(*args, **kwargs)`` with its defaults applied, as a dict; a wrong
    call is a TypeError that starts with ``owner`` (the Module's name).

    Example:
        >>> def f(x, *, alpha=0.25): ...
        >>> bind_options(options_signature(f, ("x",)), "FLoss", (), {})
        {'alpha': 0.25}
    """
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{owner}(): {error}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def constructor_signature(cls: type, options: inspect.Signature) -> inspect.Signature:
    """The signature of ``cls(...)``: the parameters that ``cls``'s own ``__init__`` (if
    it defines one) takes before its ``*args`` (the Module's inputs that are not options
    of its function, such as a matcher), then ``options``."""
    init = cls.__dict__.get("__init__")
    own = []
    for parameter in list(inspect.signature(init).parameters.values())[1:] if init else []:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            break
        own.append(parameter)
    return inspect.Signature([*own, *options.parameters.values()])
