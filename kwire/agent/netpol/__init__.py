"""NetworkPolicy enforcement (networking.k8s.io/v1) in one nftables table per node, `ip kwire-netpol`, with the
semantics of K3s's embedded kube-router network policy controller."""
