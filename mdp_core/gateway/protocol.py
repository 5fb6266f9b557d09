"""TWS message ids, tick types, error codes, request layouts and reply builders.

Layouts follow what ib_async 2.1 sends and decodes at server version 178. Request parsers
read fields positionally and raise ``MalformedRequest`` naming the field that does not parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from mdp_core.gateway.codec import encode, frame
from mdp_core.gateway.market import SimBar, SimTick

__all__ = [
    "DELAYED",
    "ERROR_TEXTS",
    "MAX_SERVER_VERSION",
    "MIN_CLIENT_VERSION",
    "ContractDetailsRequest",
    "ContractSpec",
    "HistoricalDataRequest",
    "In",
    "MalformedRequest",
    "MktDataRequest",
    "Out",
    "RealTimeBarsRequest",
    "TickType",
    "error_msg",
    "error_text",
    "historical_update",
    "parse_req_id",
    "realtime_bar",
    "tick_frames",
]

#: The highest server version spoken (newer ones switch to protobuf framing).
MAX_SERVER_VERSION = 178
#: Oldest client version ib_async/ib_insync accept.
MIN_CLIENT_VERSION = 157


class In(IntEnum):
    """Client -> server message ids handled by the gateway."""

    REQ_MKT_DATA = 1
    CANCEL_MKT_DATA = 2
    REQ_OPEN_ORDERS = 5
    REQ_ACCOUNT_UPDATES = 6
    REQ_EXECUTIONS = 7
    REQ_IDS = 8
    REQ_CONTRACT_DATA = 9
    REQ_AUTO_OPEN_ORDERS = 15
    REQ_MANAGED_ACCTS = 17
    REQ_HISTORICAL_DATA = 20
    CANCEL_HISTORICAL_DATA = 25
    REQ_CURRENT_TIME = 49
    REQ_REAL_TIME_BARS = 50
    CANCEL_REAL_TIME_BARS = 51
    REQ_MARKET_DATA_TYPE = 59
    REQ_POSITIONS = 61
    REQ_ACCOUNT_SUMMARY = 62
    CANCEL_ACCOUNT_SUMMARY = 63
    CANCEL_POSITIONS = 64
    START_API = 71
    REQ_ACCOUNT_UPDATES_MULTI = 76
    CANCEL_ACCOUNT_UPDATES_MULTI = 77
    REQ_COMPLETED_ORDERS = 99


class Out(IntEnum):
    """Server -> client message ids the gateway sends."""

    TICK_PRICE = 1
    TICK_SIZE = 2
    ERR_MSG = 4
    ACCT_VALUE = 6
    ACCT_UPDATE_TIME = 8
    NEXT_VALID_ID = 9
    CONTRACT_DATA = 10
    MANAGED_ACCTS = 15
    HISTORICAL_DATA = 17
    TICK_STRING = 46
    CURRENT_TIME = 49
    REAL_TIME_BARS = 50
    CONTRACT_DATA_END = 52
    OPEN_ORDER_END = 53
    ACCT_DOWNLOAD_END = 54
    EXECUTION_DATA_END = 55
    TICK_SNAPSHOT_END = 57
    MARKET_DATA_TYPE = 58
    POSITION_END = 62
    ACCOUNT_SUMMARY = 63
    ACCOUNT_SUMMARY_END = 64
    ACCOUNT_UPDATE_MULTI = 73
    ACCOUNT_UPDATE_MULTI_END = 74
    TICK_REQ_PARAMS = 81
    HISTORICAL_DATA_UPDATE = 90
    COMPLETED_ORDERS_END = 102


class TickType(IntEnum):
    """Live tick types sent by the gateway (see ``DELAYED`` for their delayed twins)."""

    BID_SIZE = 0
    BID = 1
    ASK = 2
    ASK_SIZE = 3
    LAST = 4
    LAST_SIZE = 5
    VOLUME = 8
    LAST_TIMESTAMP = 45
    RT_VOLUME = 48


#: Live tick type -> delayed tick type.
DELAYED: dict[int, int] = {
    0: 69,
    1: 66,
    2: 67,
    3: 70,
    4: 68,
    5: 71,
    6: 72,
    7: 73,
    8: 74,
    9: 75,
    14: 76,
    45: 88,
}

_LIVE: dict[int, int] = {k: k for k in DELAYED}

#: Standard texts of the error codes the gateway sends.
ERROR_TEXTS: dict[int, str] = {
    100: "Max rate of messages per second has been exceeded.",
    101: "Max number of tickers has been reached.",
    162: "Historical Market Data Service error message:",
    200: "No security definition has been found for the request",
    300: "Can't find EId with tickerId:",
    321: "Error validating request.-'bY' : cause - What to show field is missing or incorrect.",
    322: "Error processing request.-'bX' : cause - Duplicate ticker id",
    326: "Unable to connect as the client id is already in use. Retry with a unique client id.",
    420: "Invalid Real-time Query:",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2105: "HMDS data farm connection is broken:ushmds",
    2106: "HMDS data farm connection is OK:ushmds",
    2107: "HMDS data farm connection is inactive but should be available upon demand.ushmds",
    2108: "Market data farm connection is inactive but should be available upon demand.usfarm",
    2157: "Sec-def data farm connection is broken:secdefnj",
    2158: "Sec-def data farm connection is OK:secdefnj",
    10167: "Requested market data is not subscribed. Displaying delayed market data.",
    10225: "Bust event occurred, current subscription is deactivated. "
    "Please resubscribe real-time bars immediately.",
}


def error_text(code: int, detail: str = "") -> str:
    """The standard text of ``code`` followed by ``detail``."""
    return ERROR_TEXTS.get(code, f"Error {code}") + detail


def error_msg(req_id: int, code: int, text: str | None = None) -> bytes:
    """errMsg (4): ``4|2|reqId|code|text|advancedOrderRejectJson``.

    The last field is mandatory at server version >= 166 (ib_async unpacks it)."""
    return encode(Out.ERR_MSG, 2, req_id, code, error_text(code) if text is None else text, "")


class MalformedRequest(ValueError):
    """A request whose fields do not parse (wrong count or type)."""


def parse_req_id(fields: list[str], index: int) -> int:
    """The integer field ``fields[index]`` (a reqId, or a client id or market data type in
    the same place); ``MalformedRequest`` naming the field if it is missing or not an int."""
    try:
        return int(fields[index])
    except (IndexError, ValueError):
        raise MalformedRequest(
            f"msg {fields[0]}: field {index} (reqId) missing or not an integer in {fields!r}"
        ) from None


class _Reader:
    """Positional reader over a request's fields (field 0 is the msg id)."""

    def __init__(self, fields: list[str], start: int) -> None:
        self.fields = fields
        self.pos = start

    def text(self, name: str) -> str:
        if self.pos >= len(self.fields):
            raise MalformedRequest(
                f"msg {self.fields[0]}: field {self.pos} ({name}) missing; "
                f"got {len(self.fields)} fields"
            )
        value = self.fields[self.pos]
        self.pos += 1
        return value

    def integer(self, name: str) -> int:
        value = self.text(name)
        try:
            return int(value or 0)
        except ValueError:
            raise MalformedRequest(
                f"msg {self.fields[0]}: field {self.pos - 1} ({name}) = {value!r} is not an integer"
            ) from None

    def number(self, name: str) -> float:
        value = self.text(name)
        try:
            return float(value or 0)
        except ValueError:
            raise MalformedRequest(
                f"msg {self.fields[0]}: field {self.pos - 1} ({name}) = {value!r} is not a number"
            ) from None

    def flag(self, name: str) -> bool:
        return self.integer(name) != 0

    def skip(self, n: int) -> None:
        self.pos += n


@dataclass(frozen=True, slots=True)
class ContractSpec:
    """The 12 contract fields a client sends with a request."""

    con_id: int
    symbol: str
    sec_type: str
    last_trade: str
    strike: float
    right: str
    multiplier: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str
    trading_class: str

    @classmethod
    def read(cls, r: _Reader) -> ContractSpec:
        return cls(
            con_id=r.integer("conId"),
            symbol=r.text("symbol"),
            sec_type=r.text("secType"),
            last_trade=r.text("lastTradeDateOrContractMonth"),
            strike=r.number("strike"),
            right=r.text("right"),
            multiplier=r.text("multiplier"),
            exchange=r.text("exchange"),
            primary_exchange=r.text("primaryExchange"),
            currency=r.text("currency"),
            local_symbol=r.text("localSymbol"),
            trading_class=r.text("tradingClass"),
        )


def _skip_bag_legs(r: _Reader, contract: ContractSpec) -> None:
    if contract.sec_type == "BAG":
        r.skip(4 * r.integer("comboLegsCount"))


@dataclass(frozen=True, slots=True)
class ContractDetailsRequest:
    """reqContractDetails: ``9|8|reqId|contract[12]|includeExpired|secIdType|secId|issuerId``."""

    req_id: int
    contract: ContractSpec

    @classmethod
    def parse(cls, fields: list[str]) -> ContractDetailsRequest:
        r = _Reader(fields, 2)
        return cls(r.integer("reqId"), ContractSpec.read(r))


@dataclass(frozen=True, slots=True)
class MktDataRequest:
    """reqMktData: ``1|11|reqId|contract[12]|[legs]|dnc[, conId, delta, price]|genericTicks|
    snapshot|regulatorySnapshot|options``."""

    req_id: int
    contract: ContractSpec
    generic_ticks: str
    snapshot: bool
    regulatory_snapshot: bool

    @classmethod
    def parse(cls, fields: list[str]) -> MktDataRequest:
        r = _Reader(fields, 2)
        req_id = r.integer("reqId")
        contract = ContractSpec.read(r)
        _skip_bag_legs(r, contract)
        if r.flag("deltaNeutralContract"):
            r.skip(3)
        return cls(
            req_id,
            contract,
            generic_ticks=r.text("genericTickList"),
            snapshot=r.flag("snapshot"),
            regulatory_snapshot=r.flag("regulatorySnapshot"),
        )


@dataclass(frozen=True, slots=True)
class RealTimeBarsRequest:
    """reqRealTimeBars: ``50|3|reqId|contract[12]|barSize|whatToShow|useRTH|options``."""

    req_id: int
    contract: ContractSpec
    bar_size: int
    what_to_show: str
    use_rth: bool

    @classmethod
    def parse(cls, fields: list[str]) -> RealTimeBarsRequest:
        r = _Reader(fields, 2)
        req_id = r.integer("reqId")
        contract = ContractSpec.read(r)
        return cls(
            req_id,
            contract,
            bar_size=r.integer("barSize"),
            what_to_show=r.text("whatToShow").upper(),
            use_rth=r.flag("useRTH"),
        )


@dataclass(frozen=True, slots=True)
class HistoricalDataRequest:
    """reqHistoricalData (no version field): ``20|reqId|contract[12]|includeExpired|endDateTime|
    barSizeSetting|durationStr|useRTH|whatToShow|formatDate|[legs]|keepUpToDate|chartOptions``.

    Note bar size comes before duration on the wire.
    """

    req_id: int
    contract: ContractSpec
    end: str
    bar_size: str
    duration: str
    use_rth: bool
    what_to_show: str
    format_date: int
    keep_up_to_date: bool

    @classmethod
    def parse(cls, fields: list[str]) -> HistoricalDataRequest:
        r = _Reader(fields, 1)
        req_id = r.integer("reqId")
        contract = ContractSpec.read(r)
        r.skip(1)  # includeExpired
        end = r.text("endDateTime")
        bar_size = r.text("barSizeSetting")
        duration = r.text("durationStr")
        use_rth = r.flag("useRTH")
        what_to_show = r.text("whatToShow").upper()
        format_date = r.integer("formatDate")
        _skip_bag_legs(r, contract)
        keep_up_to_date = r.flag("keepUpToDate")
        return cls(
            req_id, contract, end, bar_size, duration, use_rth, what_to_show, format_date,
            keep_up_to_date,
        )  # fmt: skip


def realtime_bar(req_id: int, bar: SimBar) -> bytes:
    """realtimeBar (50): ``50|3|reqId|time|open|high|low|close|volume|wap|count``.

    ``time`` (bar start, epoch) and ``count`` are ints, as ib_async requires."""
    return encode(
        Out.REAL_TIME_BARS, 3, req_id, bar.time, bar.open, bar.high, bar.low, bar.close,
        bar.volume, bar.wap, bar.count,
    )  # fmt: skip


def historical_update(req_id: int, bar: SimBar, date: str) -> bytes:
    """historicalDataUpdate (90): ``90|reqId|barCount|date|open|close|high|low|wap|volume``."""
    return encode(
        Out.HISTORICAL_DATA_UPDATE, req_id, bar.count, date, bar.open, bar.close, bar.high,
        bar.low, bar.wap, bar.volume,
    )  # fmt: skip


_PRICE = "1\x006\x00%d\x00%d\x00%r\x00%r\x000\x00"
_SIZE = "2\x006\x00%d\x00%d\x00%r\x00"
_STRING = "46\x006\x00%d\x00%d\x00%s\x00"


def tick_frames(
    req_id: int,
    tick: SimTick,
    volume: float,
    vwap: float,
    delayed: bool,
    rt_volume: bool,
    previous: SimTick | None = None,
    trades: bool = True,
) -> list[bytes]:
    """The messages for one trade, sent as TWS sends changes: the quote first, then the trade.

    - bid (and likewise ask): a tickPrice with its size when the price changed since
      ``previous`` (the tick sent before on this subscription; None: the first, so always),
      a tickSize when only the size changed, nothing when neither did;
    - the trade: last tickPrice with its size, then the last-size tickSize (TWS sends both;
      ib_async records each in ``ticker.ticks``, so ``trades()`` sees both, as with TWS);
    - the cumulative volume tickSize and the lastTimestamp tickString;
    - RTVolume (generic tick 233, with the cumulative ``vwap``) if ``rt_volume``.

    No bid/ask tickSize repeats a size the tickPrice just carried: ib_async ignores such a
    tickSize (it returns early when the size equals the ticker's), so it would only cost
    decoding. ``trades=False`` (FX: quotes only) sends the bid and ask and nothing of the
    trade. Delayed subscriptions get the delayed tick types (66..76, 88) and no RTVolume.

    Hot path: formatted directly (same bytes as ``encode``; floats via ``repr``).
    """
    d = DELAYED if delayed else _LIVE
    frames = []
    if previous is None or tick.bid != previous.bid:
        frames.append(frame((_PRICE % (req_id, d[1], tick.bid, tick.bid_size)).encode()))
    elif tick.bid_size != previous.bid_size:
        frames.append(frame((_SIZE % (req_id, d[0], tick.bid_size)).encode()))
    if previous is None or tick.ask != previous.ask:
        frames.append(frame((_PRICE % (req_id, d[2], tick.ask, tick.ask_size)).encode()))
    elif tick.ask_size != previous.ask_size:
        frames.append(frame((_SIZE % (req_id, d[3], tick.ask_size)).encode()))
    if not trades:
        return frames
    frames.append(frame((_PRICE % (req_id, d[4], tick.last, tick.last_size)).encode()))
    frames.append(frame((_SIZE % (req_id, d[5], tick.last_size)).encode()))
    frames.append(frame((_SIZE % (req_id, d[8], volume)).encode()))
    frames.append(frame((_STRING % (req_id, d[45], int(tick.time))).encode()))
    if rt_volume and not delayed:
        ms = round(tick.time * 1000)
        value = f"{tick.last!r};{tick.last_size!r};{ms};{volume!r};{round(vwap, 4)!r};true"
        frames.append(encode(Out.TICK_STRING, 6, req_id, TickType.RT_VOLUME, value))
    return frames
