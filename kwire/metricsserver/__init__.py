"""kwire's implementation of the metrics-server role (what `rancher/mirrored-metrics-server` is in K3s): scrape every
node's kubelet `/metrics/resource`, keep the last two points, and serve `metrics.k8s.io/v1beta1` NodeMetrics and
PodMetrics over HTTPS for the API server's aggregation layer (`kubectl top`).
"""

# The serving certificate's files in `--cert-dir` (upstream's names), written by `selfsigned.py`.
CERT_FILE = "apiserver.crt"
KEY_FILE = "apiserver.key"
