"""The one way a loss Module wraps its function (docs/conventions.md, "Losses").

A subclass names its function and the function's per-call arguments (the tensors, and
per-call options such as ``return_terms``)::

    class GIoULoss(FunctionLoss, function=giou_loss, call_args=("boxes1", "boxes2")):
        '''Module form of giou_loss.'''

Its constructor then takes exactly the function's other parameters, with the same names,
defaults and kinds (read from the function's signature, so nothing is written twice), and
stores each as an attribute of the same name; ``forward`` takes the per-call arguments
and calls the function with the stored options.

``positional=k`` lets the first ``k`` options also be given by position (a published
constructor that took them so). A subclass whose Module needs inputs of its own (a class
count it checks ``conf`` against) defines ``__init__(self, own, ..., *args, **kwargs)``
and passes ``*args, **kwargs`` on; its own parameters lead the signature shown.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from .._checks import check_reduction
from .._signatures import bind_options, constructor_signature, options_signature

__all__ = ["FunctionLoss"]


class FunctionLoss(nn.Module):
    """Base of the loss Modules that store one function's options and call it."""

    function: ClassVar[Callable[..., Any]]
    call_args: ClassVar[tuple[str, ...]]
    options: ClassVar[tuple[str, ...]]
    _init_signature: ClassVar[inspect.Signature]

    def __init_subclass__(
        cls,
        *,
        function: Callable[..., Any] | None = None,
        call_args: tuple[str, ...] = (),
        positional: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if function is None:  # a user's subclass of a loss Module keeps its function
            return
        cls.function = staticmethod(function)  # type: ignore[assignment]
        cls.call_args = call_args
        cls._init_signature = options_signature(function, call_args, positional)
        cls.options = tuple(cls._init_signature.parameters)
        # What inspect.signature(cls) and help() show.
        cls.__signature__ = constructor_signature(cls, cls._init_signature)  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        options = bind_options(self._init_signature, type(self).__name__, args, kwargs)
        if "reduction" in options:
            check_reduction(options["reduction"])
        for name, value in options.items():
            setattr(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The function on ``args`` (its per-call arguments, in order) with the stored
        options; per-call keyword arguments (e.g. ``return_terms``) pass through."""
        if len(args) > len(self.call_args):
            raise TypeError(
                f"{type(self).__name__}.forward() takes {', '.join(self.call_args)}; "
                f"got {len(args)} positional arguments"
            )
        for name in self.options:
            if name in kwargs:
                raise TypeError(
                    f"{type(self).__name__}.forward(): {name!r} is an option of the "
                    f"constructor, not of the call"
                )
        kwargs.update(zip(self.call_args, args))
        return self.function(**kwargs, **{name: getattr(self, name) for name in self.options})

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.options)
