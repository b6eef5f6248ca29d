"""One delivery of an `ingest.batch` message, from the message to its outcome: stored, or parked (`rejected` or
`failed`, kept with its raw payload, never dropped). `parsing` reads and re-validates the message, `decision`
decides what the delivery does (pure), `deliver` carries it out, `parking` and `parked_rows` keep what is not
stored."""

from services.delivery.deliver import ingest_message
from services.delivery.parking import park_failed_message, park_unread
from services.delivery.parsing import Limits, body_missing, is_claim_check

__all__ = ["Limits", "body_missing", "ingest_message", "is_claim_check", "park_failed_message", "park_unread"]
