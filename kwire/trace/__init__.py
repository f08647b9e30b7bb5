"""`kwire trace FROM TO[:PORT][/PROTO]`: the path a packet takes through a kwire cluster, hop by hop, computed from
kwire's own state with the agents' own rule computations, and (`--probe`) confirmed by a real packet under
nftables tracing."""
