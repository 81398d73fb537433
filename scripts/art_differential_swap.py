"""
pytest plugin for ``scripts/art_differential.py``: swaps ART's ``PyTorchClassifier`` for ``LatentClassifier``.

Loaded with ``-p art_differential_swap`` (``scripts/`` on ``PYTHONPATH``), so it is imported while pytest parses its
arguments, before any conftest or test module. It is configured by environment variables, because the swap has to
happen at import time, before pytest options are available:

``ART_DIFF_MODE``
    ``stock`` (default): nothing is swapped, constructions are only counted. ``swapped``: every name
    ``PyTorchClassifier`` that refers to ART's class (``art.estimators.classification``,
    ``art.estimators.classification.pytorch`` and every module already imported that bound the name, ART's attacks
    and ``tests.utils`` included) is rebound to :class:`art_latent.estimator.LatentClassifier`; modules imported later
    get it from those two attributes. Modules that *subclass* ART's class (certified and Hugging Face estimators) are
    imported first and left alone, so that their classes keep ART's base class.
``ART_DATA_PATH``
    Passed to ``art.config.set_data_path`` (ART itself reads its data path from ``~/.art/config.json`` only).
``ART_DIFF_TEST_TIMEOUT``
    Seconds after which a test is failed with ``TimeoutError`` (``SIGALRM``; 0 disables, default 0).
``ART_DIFF_PROGRESS``
    A file to which one line per test is appended as it finishes (``outcome seconds nodeid``), and ``start nodeid``
    as it starts: where a run that crashed or hangs was.

Every test's JUnit record gets the properties ``nodeid``, ``n_latent`` (``LatentClassifier`` constructions),
``n_stock`` (constructions of ART's exact ``PyTorchClassifier``) and ``n_subclass`` (other subclasses), counted
over setup, call and teardown. In a swapped run ``n_stock`` must be 0: anything else means the swap missed a
reference. Session-level facts (the mode, rebound modules, unexpected subclasses of ``LatentClassifier``) are
written into the JUnit file as global properties.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Generator
from types import FrameType, ModuleType
from typing import Any

import pytest

MODE = os.environ.get("ART_DIFF_MODE", "stock")
if MODE not in ("stock", "swapped"):
    raise ValueError(f"ART_DIFF_MODE must be 'stock' or 'swapped', got {MODE!r}.")

# No test may hang on a download (CIFAR-10, ImageNet pictures) on a machine without internet access.
socket.setdefaulttimeout(float(os.environ.get("ART_DIFF_SOCKET_TIMEOUT", "10")))

import art.config  # noqa: E402
import art.estimators.classification as _art_classification  # noqa: E402
import art.estimators.classification.pytorch as _art_pytorch  # noqa: E402

if os.environ.get("ART_DATA_PATH"):
    art.config.set_data_path(os.environ["ART_DATA_PATH"])

STOCK_CLASS: Any = _art_pytorch.PyTorchClassifier

# Modules that define subclasses of ART's class: imported before the swap so that their classes keep ART's base.
_SUBCLASSING_MODULES = (
    "art.estimators.certification",
    "art.estimators.certification.randomized_smoothing",
    "art.estimators.certification.derandomized_smoothing",
    "art.estimators.certification.deep_z",
    "art.estimators.certification.interval",
    "art.estimators.classification.hugging_face",
)

COUNTS: Counter[str] = Counter()
REBOUND: set[str] = set()
SKIPPED_SUBCLASSING: set[str] = set()
LATENT_CLASS: type | None = None
ART_LATENT_FILES: dict[str, str] = {}


def _count(self: Any) -> None:
    if LATENT_CLASS is not None and isinstance(self, LATENT_CLASS):
        COUNTS["n_latent"] += 1
    elif type(self) is STOCK_CLASS:
        COUNTS["n_stock"] += 1
    else:
        COUNTS["n_subclass"] += 1


_stock_init = STOCK_CLASS.__init__


@functools.wraps(_stock_init)
def _counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _count(self)
    _stock_init(self, *args, **kwargs)


STOCK_CLASS.__init__ = _counting_init


def _defines_subclass(module: ModuleType) -> bool:
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and value is not STOCK_CLASS
            and issubclass(value, STOCK_CLASS)
            and value.__module__ == module.__name__
        ):
            return True
    return False


def rebind_all() -> None:
    """Rebind every module-level name ``PyTorchClassifier`` that still refers to ART's class (swapped mode only)."""
    if LATENT_CLASS is None:
        return
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith("art_latent") or name in REBOUND:
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or namespace.get("PyTorchClassifier") is not STOCK_CLASS:
            continue
        if name != _art_pytorch.__name__ and _defines_subclass(module):
            SKIPPED_SUBCLASSING.add(name)
            continue
        namespace["PyTorchClassifier"] = LATENT_CLASS
        REBOUND.add(name)


if MODE == "swapped":
    for _name in _SUBCLASSING_MODULES:
        try:
            importlib.import_module(_name)
        except Exception as error:  # an optional dependency is missing: nothing to protect then
            print(f"art_differential_swap: could not pre-import {_name}: {error}", file=sys.stderr)
    from art_latent.estimator import LatentClassifier

    LATENT_CLASS = LatentClassifier
    # Which art_latent code this run tests (the package may be edited while a run goes on).
    for _module_name, _module in sorted(sys.modules.items()):
        _file = getattr(_module, "__file__", None)
        if _module_name.startswith("art_latent") and _file:
            with open(_file, "rb") as _handle:
                ART_LATENT_FILES[_module_name] = hashlib.sha256(_handle.read()).hexdigest()[:16]
    _art_pytorch.PyTorchClassifier = LatentClassifier
    _art_classification.PyTorchClassifier = LatentClassifier
    rebind_all()


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def pytest_collection_finish(session: pytest.Session) -> None:
    """Catch modules imported during collection that bound the name in some other way."""
    rebind_all()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"art_differential: test ran longer than ART_DIFF_TEST_TIMEOUT={_TIMEOUT}s")


_TIMEOUT = int(os.environ.get("ART_DIFF_TEST_TIMEOUT", "0"))
_PROGRESS = os.environ.get("ART_DIFF_PROGRESS")


def _progress(line: str) -> None:
    if _PROGRESS:
        with open(_PROGRESS, "a", encoding="utf8") as handle:
            handle.write(line + "\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Reset the counters and arm the per-test timeout around the whole protocol of one test."""
    rebind_all()
    COUNTS.clear()
    _progress(f"start {item.nodeid}")
    started = time.monotonic()
    if _TIMEOUT > 0:
        signal.signal(signal.SIGALRM, _on_alarm)
    try:
        return (yield)
    finally:
        if _TIMEOUT > 0:
            signal.alarm(0)
        _progress(f"{_OUTCOMES.pop(item.nodeid, 'unknown')} {time.monotonic() - started:.1f} {item.nodeid}")


_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember the worst outcome of each test for the progress file."""
    if report.failed:
        _OUTCOMES[report.nodeid] = "failed" if report.when == "call" else "error"
    elif report.skipped and report.nodeid not in _OUTCOMES:
        _OUTCOMES[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and report.nodeid not in _OUTCOMES:
        _OUTCOMES[report.nodeid] = "passed"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Limit the test body (not its fixtures) to ``ART_DIFF_TEST_TIMEOUT`` seconds."""
    if _TIMEOUT > 0:
        signal.alarm(_TIMEOUT)
    try:
        return (yield)
    finally:
        if _TIMEOUT > 0:
            signal.alarm(0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the node id and the construction counts to the teardown report (JUnit writes them as properties)."""
    report = yield
    if call.when == "teardown":
        report.user_properties = [
            *report.user_properties,
            ("nodeid", item.nodeid),
            ("n_latent", COUNTS["n_latent"]),
            ("n_stock", COUNTS["n_stock"]),
            ("n_subclass", COUNTS["n_subclass"]),
        ]
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Record the mode and what the swap touched in the JUnit file's global properties (before JUnit writes it)."""
    from _pytest.junitxml import xml_key

    log = session.config.stash.get(xml_key, None)
    if log is None:
        return
    log.add_global_property("art_diff_mode", MODE)
    log.add_global_property("rebound_modules", ",".join(sorted(REBOUND)))
    log.add_global_property("subclassing_modules_left_alone", ",".join(sorted(SKIPPED_SUBCLASSING)))
    if LATENT_CLASS is not None:
        rebased = sorted(f"{c.__module__}.{c.__qualname__}" for c in _subclasses(LATENT_CLASS))
        log.add_global_property("classes_rebased_on_latent", ",".join(rebased))
        log.add_global_property("art_latent_sha256", ",".join(f"{k}={v}" for k, v in ART_LATENT_FILES.items()))
