"""The ingress controller (K3s's Traefik role): Ingress v1 -> a native nginx data plane in the traefik pod."""
