"""einhorn: the language-independent shared socket manager (a Python port of Stripe's Einhorn)."""

__version__ = "1.1.0"
