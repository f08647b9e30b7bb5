"""Runtime client layer: kubeconfig, async API client, informers."""

from kwire.client.client import (
    AlreadyExists,
    ApiClient,
    ApiStatusError,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Resource,
)
from kwire.client.informer import Informer, Informers
from kwire.client.kubeconfig import Config, in_cluster_config, load_kubeconfig, write_kubeconfig

__all__ = [
    "AlreadyExists",
    "ApiClient",
    "ApiStatusError",
    "Config",
    "Conflict",
    "Gone",
    "Informer",
    "Informers",
    "Invalid",
    "NotFound",
    "Resource",
    "in_cluster_config",
    "load_kubeconfig",
    "write_kubeconfig",
]
