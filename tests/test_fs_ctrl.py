"""The daemon's side of the control file: flushes run one after the other, and a client waiting
for one hears of its end at once (or gets the progress so far after ``WAIT_MAX``)."""

from __future__ import annotations

import json

import pytest
import trio

from safefs.errors import GatewayError
from safefs.fs.ctrl import WAIT_MAX, Control


async def test_wait_answers_at_the_flush_end_or_after_wait_max(autojump_clock) -> None:
    finish = trio.Event()
    pulls = []

    async def flush(pull: bool) -> None:
        pulls.append(pull)
        await finish.wait()

    control = Control(flush, dict, lambda: 42)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        assert json.loads(await control.wait())["flush_requested"] == 0  # nothing to wait for
        control.request_flush(pull=True)
        start = trio.current_time()
        progress = json.loads(await control.wait())
        assert trio.current_time() - start == pytest.approx(WAIT_MAX)
        assert (progress["flush_requested"], progress["flush_done"]) == (1, 0)
        assert progress["uploaded_bytes"] == 42

        async def finish_soon() -> None:
            await trio.sleep(0.1)
            finish.set()

        nursery.start_soon(finish_soon)
        start = trio.current_time()
        progress = json.loads(await control.wait())
        assert trio.current_time() - start == pytest.approx(0.1)
        assert (progress["flush_done"], progress["flush_failed"]) == (1, 0) and pulls == [True]
        nursery.cancel_scope.cancel()


async def test_wait_answers_when_a_flush_fails(autojump_clock) -> None:
    async def flush(pull: bool) -> None:
        await trio.sleep(0.05)
        raise GatewayError(503, -1, "gateway gone")

    control = Control(flush, dict, lambda: 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        control.request_flush(pull=False)
        start = trio.current_time()
        progress = json.loads(await control.wait())
        assert trio.current_time() - start == pytest.approx(0.05)
        assert (progress["flush_done"], progress["flush_failed"]) == (0, 1)
        assert "gateway gone" in progress["flush_error"]
        nursery.cancel_scope.cancel()
