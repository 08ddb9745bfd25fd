"""ISO code sets used by validation (ISO 3166-1 alpha-2, ISO 4217, ISO 639)."""
from __future__ import annotations

import pycountry

COUNTRIES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)
CURRENCIES: frozenset[str] = frozenset(c.alpha_3 for c in pycountry.currencies)
LANGUAGES: frozenset[str] = frozenset(
    code for lang in pycountry.languages for code in (getattr(lang, "alpha_2", None), lang.alpha_3) if code
)
