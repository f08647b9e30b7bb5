"""`kwire check`: K3s's `check-config` and the K3s guides' troubleshooting recipes, automated.

Each module owns one family of checks and keeps the pure part (crafted inputs -> findings, tested without
privileges) apart from the part that reads the kernel or the API: `kernel` (kernel features), `sysctls`, `mtu`,
`offload` (the VXLAN checksum offload bug), `firewall` (other firewalls in the node's namespace), `dns`
(resolv.conf loops, cluster DNS answering), `hairpin`, `cni` (the conflist), `flannel` (nodes, leases, public IPs), `services`
(selectors matching no pod), `loadbalancers` (pending LoadBalancers and why); `vethpods` names the pod behind a
cni0 port. `node` runs the node's checks in the
namespace the process is in, `cluster` the API's, `lab` both across a `kwire lab`.
"""
