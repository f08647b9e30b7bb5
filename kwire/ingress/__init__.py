"""The ingress controller (K3s's Traefik role): Ingress v1 and Traefik's IngressRoute/Middleware -> a native nginx
data plane (with its Lua module) in the traefik pod."""
