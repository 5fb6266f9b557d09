"""Contract details requests: every instrument the contract designates, like IB's answer."""

from __future__ import annotations

from mdp_core.gateway.client import ClientState
from mdp_core.gateway.codec import encode
from mdp_core.gateway.instruments import contract_data
from mdp_core.gateway.protocol import ContractDetailsRequest, Out, error_msg

__all__ = ["req_contract_details"]


def req_contract_details(client: ClientState, fields: list[str]) -> list[bytes]:
    """contractData for each match (several: ambiguous) and the end; error 200 if none."""
    req = ContractDetailsRequest.parse(fields)
    found = client.state.matching(req.contract)
    if not found:
        return [error_msg(req.req_id, 200)]
    return [
        *(contract_data(req.req_id, inst, req.contract.exchange) for inst in found),
        encode(Out.CONTRACT_DATA_END, 1, req.req_id),
    ]
