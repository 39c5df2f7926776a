"""``salt_cli.run``'s interface over Salt's Python API, for tests that use the CLI only as a means.

Each ``salt`` CLI call is a new process that imports Salt and authenticates with the master: ~0.7 s
on an idle machine, 2 s and more on the loaded 2-core CI machine, before the job is even published.
A test that only needs a function run on a minion (and does not check what the CLI prints) calls
through one :class:`salt.client.LocalClient` instead: the same publish to the same master, the
arguments parsed as the CLI parses them (``key=value`` becomes a keyword argument, values are
YAML), the returns in the master's job cache as before. Tests about the CLI's own output keep
``salt_cli``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import salt.client
import salt.utils.args


class SaltApiResult(NamedTuple):
    """What the tests read of a ``salt_cli.run`` result: the minion's retcode and its return."""

    returncode: int
    data: Any


class SaltApiCli:
    """``run(fun, *args, minion_tgt=...)`` like ``salt_master.salt_cli().run``, through one LocalClient."""

    def __init__(self, master, timeout: float = 180):
        self.client = salt.client.LocalClient(c_path=master.config_file)
        self.timeout = timeout

    def run(self, fun: str, *args: str, minion_tgt: str, _timeout: float | None = None) -> SaltApiResult:
        returns = self.client.cmd(minion_tgt, fun, arg=salt.utils.args.parse_input(list(args)),
                                  timeout=_timeout or self.timeout, full_return=True)
        if minion_tgt not in returns:
            return SaltApiResult(1, None)  # no return within the timeout (the CLI exits 1 too)
        answer = returns[minion_tgt]
        return SaltApiResult(int(answer.get("retcode") or 0), answer.get("ret"))

    def close(self) -> None:
        self.client.destroy()
