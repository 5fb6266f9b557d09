"""The Interactive Brokers provider: ``IBKRStreamSource`` over ib_async.

Importing this package needs neither ib_async nor ib_insync; building a source does
(``ProviderError`` saying ``pip install 'mdp[ibkr]'`` otherwise).
"""

from __future__ import annotations

from mdp_core.providers.ibkr.connection import DuplicateClientIdError, IBKRConnectError
from mdp_core.providers.ibkr.source import IBKRIssue, IBKRStreamSource

__all__ = [
    "DuplicateClientIdError",
    "IBKRConnectError",
    "IBKRIssue",
    "IBKRStreamSource",
]
