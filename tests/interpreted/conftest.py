"""Under Triton's interpreter (the child process of tests/_triton.py): a workaround.

Triton 3.6's interpreter passes a kernel's integer arguments as one-element arrays and
turns them into loop bounds with ``int()``, which NumPy 2.4 refuses for arrays that are
not zero-dimensional; ``.item()`` reads them the same way. Nothing is patched in the main
test process.
"""

from __future__ import annotations

import os

if os.environ.get("TRITON_INTERPRET") == "1":
    from triton.runtime import interpreter

    _patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if _patch_tensor is not None:

        def _patched(tensor, scope):
            _patch_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

        interpreter._patch_lang_tensor = _patched
