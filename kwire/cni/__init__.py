"""CNI for kwire: the `flannel` meta-plugin (flannel.py), a libcni equivalent for the kubelet (invoke.py) and
the K3s-style conflist and plugin shim (install.py).

Kept empty on purpose: the plugin runs once per pod event and must import as little as possible.
"""
