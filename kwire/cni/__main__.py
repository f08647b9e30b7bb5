"""`python -m kwire.cni`: the `flannel` CNI plugin (what the `flannel` shim in the CNI bin dir execs)."""

from kwire.cni.flannel import main

raise SystemExit(main())
