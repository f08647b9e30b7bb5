"""The prober manager: one worker per probe of a pod's containers, as kubelet's prober workers.

Results go through `ProbeState` (kubelet's thresholds); every failed attempt is an `Unhealthy` event with kubelet's
text (`Readiness probe failed: dial tcp 10.42.0.31:81: connect: connection refused`), a flipped result re-queues
the pod's sync, and a liveness probe that turns to failure restarts the container. A pod's workers end with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kwire.agent.kubelet.probes import ProbeState, run_probe
from kwire.base.tasks import cancel_and_wait

Obj = dict[str, Any]


@dataclass
class PodProbes:
    """The probe workers of one pod and their current results."""

    readiness: dict[str, ProbeState] = field(default_factory=dict)
    liveness: dict[str, ProbeState] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def ready(self, container: str) -> bool | None:
        """The readiness result of a container; None when it has no readiness probe."""
        ps = self.readiness.get(container)
        return ps.result if ps is not None else None

    def start(
        self,
        containers: list[Obj],
        *,
        pod_ip: str,
        netns: str,
        on_failure: Callable[[str, str, str], Awaitable[None]],
        on_flip: Callable[[], None],
        on_liveness_failure: Callable[[str], Awaitable[None]],
        enter: Callable[[str, list[str]], list[str]] | None = None,
    ) -> None:
        """Start the workers once; `on_failure(container, "Readiness"|"Liveness", message)` is called for every
        failed attempt, `on_flip()` when a result changes, `on_liveness_failure(container)` to restart one;
        `enter(container, command)` is the argv an exec probe runs (in the container, as `kubectl exec`)."""
        if self.tasks:
            return
        for c in containers:
            name = str(c.get("name", ""))
            for key, table, initial, what in (
                ("readinessProbe", self.readiness, False, "Readiness"),
                ("livenessProbe", self.liveness, True, "Liveness"),
            ):
                if not c.get(key):
                    continue
                ps = ProbeState(c[key], initial=initial)
                table[name] = ps

                async def loop(c: Obj = c, ps: ProbeState = ps, what: str = what, name: str = name) -> None:
                    await asyncio.sleep(ps.initial_delay)
                    while True:
                        into = (lambda argv, name=name: enter(name, argv)) if enter else None
                        ok, msg = await run_probe(ps.probe, container=c, pod_ip=pod_ip, netns=netns, enter=into)
                        flipped = ps.record(ok, msg)
                        if not ok:
                            await on_failure(name, what, msg)
                        if flipped:
                            if what == "Liveness" and not ps.result:
                                await on_liveness_failure(name)
                                ps.reset()
                                for rs in self.readiness.values():
                                    rs.reset()
                                await asyncio.sleep(ps.initial_delay)
                            on_flip()
                        await asyncio.sleep(ps.period)

                self.tasks.append(asyncio.create_task(loop()))

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)
        self.tasks.clear()
