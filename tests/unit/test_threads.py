"""bridge.threads: a loop thread that dies is remembered by name."""

from __future__ import annotations

import logging

from bridge.threads import Threads


def boom() -> None:
    raise RuntimeError("boom")


def test_a_thread_whose_target_raises_is_named_with_its_exception(caplog):
    threads = Threads()
    thread = threads.start("reconciler", boom)
    thread.join(5)
    assert threads.dead() == {"reconciler": "RuntimeError: boom"}
    assert thread.daemon, "a loop thread must never keep the process from exiting"
    died = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert died and "reconciler" in died[0].getMessage() and died[0].exc_info, \
        "the death is logged with its traceback"


def test_a_thread_that_returns_is_not_dead():
    threads = Threads()
    threads.start("consul-billing", lambda: None).join(5)
    assert threads.dead() == {}
