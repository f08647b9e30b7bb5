"""kwire's cluster DNS server: the CoreDNS role as K3s configures CoreDNS (`python -m kwire.dns`).

See docs/architecture.md, "Cluster DNS". `run(DnsConfig(...))` serves until cancelled; `start()` returns the
running `DnsServer` (tests, embedding).
"""

from kwire.dns.config import DnsConfig
from kwire.dns.server import DnsServer, run, start

__all__ = ["DnsConfig", "DnsServer", "run", "start"]
