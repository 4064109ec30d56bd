"""The usage domain: what the versions say about console usage, and where it goes.

Owns reading the console's "resets in" texts (:mod:`.resets`), the forecast of each
limit (:mod:`.forecast`), the forecast over the versions a reader holds
(:mod:`.usage_history`) and the history as a table of rows (:mod:`.export`).

May import: :mod:`ingester.errors`, :mod:`ingester.clock`, :mod:`ingester.payload` and
the history's read side (:mod:`ingester.history`).
"""
