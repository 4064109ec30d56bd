"""What a long-running command needs, shared by ``watch``, ``serve`` and ``mirror``.

Owns logging (:mod:`.logs`: one line per event, text, journal or JSON), systemd's
notify protocol (:mod:`.notify`), the metric naming rules and the small metrics server
(:mod:`.metrics`), which connections a server takes (:mod:`.admission`) and the
signals that stop a service (:mod:`.signals`).

May import: :mod:`ingester.errors` and :mod:`ingester.clock` only.
"""
