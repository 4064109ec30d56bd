"""One base for every error the package raises, and the public API named in ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ingester
from ingester.errors import IngesterError, StorageError


def _package_modules() -> list[object]:
    return [
        importlib.import_module(f"ingester.{info.name}")
        for info in pkgutil.iter_modules(ingester.__path__)
        if info.name != "__main__"
    ]


def test_every_exception_class_of_the_package_derives_from_the_base() -> None:
    found = set()
    for module in _package_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("ingester"):
                found.add(obj)
                assert issubclass(obj, IngesterError), f"{obj.__module__}.{obj.__qualname__}"
    assert {StorageError, ingester.PayloadRejected, ingester.LockHeld} <= found


def test_storage_error_is_still_an_os_error_with_one_line() -> None:
    err = StorageError("write", "/x/y", OSError(28, "No space left on device"))
    assert isinstance(err, OSError) and err.errno == 28
    assert str(err) == "cannot write /x/y: No space left on device [ENOSPC]"


def test_the_public_api_is_exactly_what_all_names() -> None:
    assert set(ingester._HOMES) == set(ingester.__all__)  # the names loaded on first use
    for name in ingester.__all__:
        assert hasattr(ingester, name), name
    for operation in ("initialize", "save_version", "cleanup_old_versions"):
        assert callable(getattr(ingester.HistoryStore, operation))
    for operation in ("get_storage_metadata", "list_versions"):
        assert callable(getattr(ingester.HistoryStore, operation))
    assert "HistoryLock" in ingester.__all__ and "LockHeld" in ingester.__all__
    assert "IngesterError" in ingester.__all__
