"""Remote storage: the history's copy in S3-compatible object storage, and the way back.

Owns the object store client and what its failures mean (:mod:`.objectstore`), the
object-store backing of the history (:mod:`.s3_history`: its reader, the mirror's writer
and restore's fetch, with one checksum rule), the mirror that copies versions out: the
service (:mod:`.mirror`), its options (:mod:`.options`), one pass of uploads, checks and
deletions (:mod:`.sync`), objects under version names that are not ours
(:mod:`.junk`), its progress, the watermark and the state file
(:mod:`.progress`), with the state file's format and the hold it puts on local
retention (:mod:`.state`), and ``restore`` (:mod:`.restore`).

May import: :mod:`ingester.errors`, :mod:`ingester.clock`, :mod:`ingester.payload`,
:mod:`ingester.runtime` and the history's interfaces (:mod:`ingester.history`): it reads
a local history through its reader and writes one through its writer, never through the
local store's own modules.
"""
