"""Fleet mode: many nodes writing into one PostgreSQL store, fleet rules evaluated once.

Every node's daemon writes its samples under its ``node`` label (``storage/``) and
refreshes its row in ``nodes`` (:mod:`nodes`). One of them, the leader, holds a
PostgreSQL advisory lock (:mod:`leader`) and evaluates the rules with
``scope = "fleet"`` (``detectors/fleet_rules.py``) over every node's samples
(:mod:`source`), keeping their alert state in ``fleet_alerts`` so that the next
leader continues where it stopped (:mod:`evaluator`). ``gpuwarden fleet status``
reads the same tables (``tools/fleet_status.py``).
"""
