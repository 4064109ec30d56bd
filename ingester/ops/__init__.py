"""Operating a history: the answers and tools the commands offer beside ingest.

Owns the read-only reports (:mod:`.queries`: status, list, show, verify), the
Nagios-style health check (:mod:`.check`), point-in-time snapshots for backups
(:mod:`.snapshot`) and adopting a history the original server wrote (:mod:`.adopt`).

May import anything of ours below the command line and the HTTP face: the history,
the payload, the intake's spool, the mirror's state, the usage domain, the settings.
"""
