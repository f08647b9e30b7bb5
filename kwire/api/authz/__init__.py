"""Authorization as K3s configures kube-apiserver: `--authorization-mode=Node,RBAC`, the NodeRestriction admission
plugin, RBAC escalation prevention, impersonation, the authorization.k8s.io reviews and the bootstrap policy.

attributes (what is decided on), rules (PolicyRule matching and covering), rbac (the RBAC index and authorizer),
node (the Node authorizer and its pod graph), chain (masters, Node, RBAC in order; kube's 403 text; its store
watches keeping the index and graph current are kwire.api.follow's), bootstrappolicy + reconcile (the default roles and bindings),
escalation and noderestriction (checks in the write path), impersonation, reviews.
"""
