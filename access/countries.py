"""Country names: one mapping from ISO 3166-1 alpha-2 codes to the names people use.

The apply form, the review queue and detail pages, the applicant's pages and the exports all name a
country through here, so "KR" reads "South Korea" everywhere (pycountry's `common_name` where it has
one, e.g. not "Korea, Republic of" on one page and "South Korea" on another).
"""

from __future__ import annotations

from functools import cache

import pycountry


@cache
def _names() -> dict[str, str]:
    return {c.alpha_2: getattr(c, "common_name", None) or c.name for c in pycountry.countries}


def country_name(code: str | None) -> str:
    """The country's name for `code` (any case); an unknown code is returned as given."""
    if not code:
        return ""
    return _names().get(code.strip().upper(), code)


@cache
def country_choices() -> list[tuple[str, str]]:
    """(code, name) for every country, sorted by name, for <select> lists."""
    return sorted(_names().items(), key=lambda choice: choice[1])
