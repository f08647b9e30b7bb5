"""kwire's MetalLB (layer 2): what pods of `quay.io/metallb/controller` and `quay.io/metallb/speaker` run.

`pools.py` reads IPAddressPools and answers which IPs a Service may get (MetalLB's `internal/allocator`);
`controller.py` assigns them (MetalLB's controller); `election.py`, `members.py` and `arp.py` make the speaker
(MetalLB's speaker in layer 2 mode: one leader per IP answers ARP).
"""
