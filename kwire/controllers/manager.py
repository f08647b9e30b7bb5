"""The controller manager: one API client and one set of shared informers for all the server-side controllers.

Owns their lifecycle. The controllers talk to the API over HTTPS like any other client (the server's own URL and
CA, and their own client certificate `system:kube-controller-manager`), never to the store. `start()` starts the informers and returns; once every cache has listed,
each controller's `prepare()` runs (IPAM rebuilds its map of used subnets there) and then its workers start.
"""

from __future__ import annotations

import asyncio
import logging

from kwire.base.tasks import cancel_and_wait
from kwire.client import ApiClient, Config, Informers
from kwire.controllers.addons import AddonController, AddonSettings
from kwire.controllers.clusterroleaggregation import ClusterRoleAggregation
from kwire.controllers.cronjob import CronJobController
from kwire.controllers.daemonset import DaemonSetController
from kwire.controllers.deployment import DeploymentController
from kwire.controllers.disruption import DisruptionController
from kwire.controllers.endpoints import EndpointsController
from kwire.controllers.endpointslices import EndpointSliceController
from kwire.controllers.ipam import NodeIpam
from kwire.controllers.job import JobController
from kwire.controllers.localpath import LocalPathProvisioner
from kwire.controllers.nodelifecycle import NodeLifecycle
from kwire.controllers.nodepassword import NodePasswordController
from kwire.controllers.podgc import PodGC
from kwire.controllers.queue import Controller
from kwire.controllers.replicaset import ReplicaSetController
from kwire.controllers.resourcequota import ResourceQuotaController
from kwire.controllers.scheduler import Scheduler
from kwire.controllers.serviceaccounts import ServiceAccountsController
from kwire.controllers.servicelb import ServiceLB
from kwire.controllers.statefulset import StatefulSetController
from kwire.controllers.taintmanager import TaintManager
from kwire.controllers.tokens import LegacySigner, TokensController

log = logging.getLogger(__name__)


class ControllerManager:
    def __init__(
        self,
        config: Config,
        *,
        cluster_cidr: str = "10.42.0.0/16",
        node_cidr_mask_size: int = 24,
        node_monitor_grace_period: float = 40.0,
        addons: AddonSettings | None = None,
        legacy_tokens: tuple[LegacySigner, bytes] | None = None,
    ) -> None:
        """`legacy_tokens`: (signer, cluster CA) for the TokensController, which the server gives (it owns the key)."""
        self.client = ApiClient(config)
        self.informers = Informers(self.client)
        self.controllers: list[Controller] = []
        try:
            self.controllers.append(
                NodeIpam(
                    self.client, self.informers, cluster_cidr=cluster_cidr, node_cidr_mask_size=node_cidr_mask_size
                )
            )
        except ValueError as exc:
            log.error("node IPAM is off: %s", exc)
        self.controllers += [
            Scheduler(self.client, self.informers),
            ReplicaSetController(self.client, self.informers),
            DeploymentController(self.client, self.informers),
            DaemonSetController(self.client, self.informers),
            StatefulSetController(self.client, self.informers),
            JobController(self.client, self.informers),
            CronJobController(self.client, self.informers),
            EndpointSliceController(self.client, self.informers),
            EndpointsController(self.client, self.informers),
            NodeLifecycle(self.client, self.informers, grace_period=node_monitor_grace_period),
            TaintManager(self.client, self.informers),
            PodGC(self.client, self.informers),
            NodePasswordController(self.client, self.informers),
            DisruptionController(self.client, self.informers),
            ServiceAccountsController(self.client, self.informers),
            AddonController(self.client, self.informers, settings=addons or AddonSettings()),
            ClusterRoleAggregation(self.client, self.informers),
            ResourceQuotaController(self.client, self.informers),
        ]
        if legacy_tokens is not None:
            sign, ca_pem = legacy_tokens
            self.controllers.append(TokensController(self.client, self.informers, sign=sign, ca_pem=ca_pem))
        if "local-storage" not in (addons or AddonSettings()).disable:
            self.controllers.append(LocalPathProvisioner(self.client, self.informers))
        if "servicelb" not in (addons or AddonSettings()).disable:
            self.controllers.append(ServiceLB(self.client, self.informers))
        self._starter: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    def start(self) -> None:
        self.informers.start()
        self._starter = asyncio.create_task(self._start_controllers(), name="controller-manager-start")

    async def _start_controllers(self) -> None:
        while True:
            try:
                await self.informers.wait_synced(timeout=30.0)
                break
            except TimeoutError:
                log.warning("controller manager: informer caches are not synced after 30s; still waiting")
        for c in self.controllers:
            await c.start()
        self.started.set()
        log.info("controller manager: started %s", ", ".join(c.name for c in self.controllers))

    async def wait_started(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.started.wait(), timeout)

    async def stop(self) -> None:
        await cancel_and_wait(self._starter)
        for c in self.controllers:
            await c.stop()
        await self.informers.stop()
        await self.client.close()
