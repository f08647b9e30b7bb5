"""kwire's nftables layer: the typed model (`model`), the one diff/replace path to a transaction (`diff`), where
transactions are applied (`applier`: the kernel or a recording fake) and the libnftables/`nft` binding (`kernel`).

The names most callers need are re-exported here.
"""

from kwire.kernel.nft.applier import Applier, KernelApplier, RecordingApplier
from kwire.kernel.nft.diff import Transaction, delete, diff, replace
from kwire.kernel.nft.kernel import NftError, apply, list_table, table_exists, table_names
from kwire.kernel.nft.model import (
    Chain,
    Hook,
    Map,
    Rule,
    Set,
    Table,
    Text,
    comment_text,
    digest,
    key_comment,
    object_id,
    rule_text,
    table,
)

__all__ = [
    "Applier",
    "Chain",
    "Hook",
    "KernelApplier",
    "Map",
    "NftError",
    "RecordingApplier",
    "Rule",
    "Set",
    "Table",
    "Text",
    "Transaction",
    "apply",
    "comment_text",
    "delete",
    "diff",
    "digest",
    "key_comment",
    "list_table",
    "object_id",
    "replace",
    "rule_text",
    "table",
    "table_exists",
    "table_names",
]
