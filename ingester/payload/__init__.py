"""The payload: what a drop must be, and how its bytes are judged.

Owns the scraper's contract: the pydantic model (:mod:`.model`), the gate every drop
passes without building the model classes (:mod:`.gate`), its first step, a drop's bytes
read as JSON (:mod:`.json_reading`), and the JSON Schema taken from the model
(:mod:`.schema`).

May import: :mod:`ingester.errors` and :mod:`ingester.clock` only.
"""
