"""K3s's node endpoints as both ends name them: the paths under `/v1-k3s/`, the headers a node sends, and the
component certificates it is issued. The server's side is kwire/api/nodecerts.py, the agent's
kwire/agent/credentials.py; the names are K3s's (pkg/server/router.go), so neither restates them.
"""

from __future__ import annotations

PREFIX = "/v1-k3s/"
NAME_HEADER = "K3s-Node-Name"
PASSWORD_HEADER = "K3s-Node-Password"
IP_HEADER = "K3s-Node-IP"

# A node's component certificates: each is `/v1-k3s/<component>.crt`, kept as <component>.crt/.key on the node.
KUBELET_CLIENT = "client-kubelet"
KUBELET_SERVING = "serving-kubelet"
KUBE_PROXY_CLIENT = "client-kube-proxy"
CONTROLLER_CLIENT = "client-k3s-controller"
COMPONENTS = (KUBELET_CLIENT, KUBELET_SERVING, KUBE_PROXY_CLIENT, CONTROLLER_CLIENT)
CLIENT_CA = "client-ca.crt"
SERVER_CA = "server-ca.crt"
CONFIG = "config"  # the cluster settings agents run with (K3s's agent config endpoint)


def cert_file(component: str) -> str:
    """The endpoint and file name of a component's certificate."""
    return f"{component}.crt"
