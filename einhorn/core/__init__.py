from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    from typing import NoReturn


def assert_never(value: NoReturn) -> NoReturn:
    """`typing.assert_never` (the same check for mypy, the same error), without importing typing."""
    shown = repr(value)
    raise AssertionError(f"Expected code to be unreachable, but got: {shown if len(shown) <= 100 else shown[:100] + '...'}")
