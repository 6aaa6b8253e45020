"""How the public signatures change without breaking callers silently (docs/conventions.md).

- :func:`renamed` — an argument that has a new name: passing the old one is a TypeError
  naming the new one, for one release, then the old name goes.
- :func:`keyword_only_masks` — masks are keyword-only; where a published signature took
  a mask by position, that call keeps working for one release with a FutureWarning that
  says which keyword to write.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["keyword_only_masks", "renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Reject the old keyword names of ``function``'s arguments with a TypeError that names
    the new one.

    Example:
        >>> @renamed(overlap_threshold="pos_threshold")
        ... def f(*, pos_threshold=0.5):
        ...     return pos_threshold
        >>> f(overlap_threshold=0.4)
        Traceback (most recent call last):
        ...
        TypeError: f(): 'overlap_threshold' was renamed 'pos_threshold'
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            for old in old_to_new.keys() & kwargs.keys():
                raise TypeError(f"{function.__name__}(): {old!r} was renamed {old_to_new[old]!r}")
            return function(*args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate


def keyword_only_masks(positional: int, legacy: tuple[str, ...]) -> Callable[[F], F]:
    """Accept, for one release, the masks ``legacy`` passed by position after the first
    ``positional`` arguments (as an older signature allowed), with a FutureWarning naming
    the keyword to use; ``function`` itself declares them keyword-only.

    Example:
        >>> @keyword_only_masks(1, ("target_mask",))
        ... def g(cost, *, target_mask=None):
        ...     return target_mask
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     g(1.0, "m")
        'm'
        >>> print(caught[0].message)
        g(): pass target_mask by keyword (target_mask=...); positional masks are deprecated
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            extra = args[positional:]
            if extra:
                if len(extra) > len(legacy):
                    raise TypeError(
                        f"{function.__name__}() takes {positional} positional arguments "
                        f"and the masks {', '.join(legacy)}; got {len(args)} positional"
                    )
                names = legacy[: len(extra)]
                for name, value in zip(names, extra):
                    if name in kwargs:
                        raise TypeError(f"{function.__name__}() got two values for {name!r}")
                    kwargs[name] = value
                warnings.warn(
                    f"{function.__name__}(): pass {' and '.join(names)} by keyword "
                    f"({', '.join(n + '=...' for n in names)}); positional masks are deprecated",
                    FutureWarning,
                    stacklevel=2,
                )
            return function(*args[:positional], **kwargs)

        return call  # type: ignore[return-value]

    return decorate
