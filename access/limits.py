"""Input bounds shared by the web forms and the API serializers, so both refuse the same input.

Without them a web form took text of any length the API refused, an id beyond 64 bits overflowed the
database driver, and a date filter of 9999-12-31 overflowed when the day after it was computed.
"""

from __future__ import annotations

from datetime import date

# Row ids are 64-bit; versions are 32-bit columns. Anything larger is a client error, not an overflow.
MAX_ID = 2**63 - 1
MAX_VERSION = 2**31 - 1

MAX_NAME = 200  # names, affiliations, roles (the model columns' length)
MAX_TEXT = 20_000  # research purpose, intended use, answers, notes, questions, reasons
MAX_PUBLICATION = 500  # one publication URL or DOI
MAX_PUBLICATIONS = 20
MAX_SEARCH = 200

# Date filters: far enough for any real row, near enough that "the day after" never overflows.
MIN_FILTER_DATE = date(1970, 1, 1)
MAX_FILTER_DATE = date(9998, 12, 31)
FILTER_DATE_ERROR = f"Enter a date between {MIN_FILTER_DATE:%Y-%m-%d} and {MAX_FILTER_DATE:%Y-%m-%d}."
