"""The usage domain: what the versions say about console usage, and where it goes.

Owns reading the console's "resets in" texts (:mod:`.resets`), a snapshot's usage
limits as readings (:mod:`.readings`), where a limit reset and its burn rate
(:mod:`.burn_rate`), the forecast of each limit (:mod:`.forecast`), the forecast in
words (:mod:`.words`), the forecast over the versions a reader holds
(:mod:`.usage_history`) and the history as a table of rows (:mod:`.export`).

May import: :mod:`ingester.errors`, :mod:`ingester.clock`, :mod:`ingester.payload` and
the history's read side (:mod:`ingester.history`).
"""
