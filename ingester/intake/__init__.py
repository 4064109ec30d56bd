"""The intake: where a drop is taken from the spool and stored, exactly once.

Owns the spool folder (:mod:`.spool`), arrivals (:mod:`.arrivals`: inotify or polling),
whether a drop is complete (:mod:`.readiness`) and which older drop a complete one waits
behind (:mod:`.arrival_order`), one drop's steps and its group's commit (:mod:`.intake`)
and when its own inode may become the version (:mod:`.zero_copy`), the checks and moves
of a claimed drop's file (:mod:`.claims`), a drop set aside in the quarantine
(:mod:`.set_aside`), a drop that is a stored version under a second name
(:mod:`.second_names`), what a crash left in ``.claimed/`` (:mod:`.recovery`) and
whether such a claim is done already (:mod:`.done_claims`, the rule the reports count it
by too), retention of quarantined drops (:mod:`.housekeeping`), the drops waiting and
the groups they are taken in (:mod:`.groups`), the service loop (:mod:`.watcher`) and
its metrics (:mod:`.metrics`). ``docs/design.md`` numbers the steps.

May import: :mod:`ingester.errors`, :mod:`ingester.clock`, :mod:`ingester.settings`,
:mod:`ingester.payload`, :mod:`ingester.history` and :mod:`ingester.runtime`. Nothing
that serves, mirrors, reports or runs commands.
"""
