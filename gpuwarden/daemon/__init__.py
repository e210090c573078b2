"""The daemon: the parts wired together and run every interval.

``lifecycle.Daemon`` is the entry point (start, signals, reload, stop); ``wiring``
builds the parts from a ``Config``; ``cycle`` is one collection cycle; ``alerting``
runs the rules and hands their transitions to delivery; ``self_metrics`` is
gpuwarden's own health on ``/metrics``; ``schedule`` the APScheduler jobs; ``pushed``
the samples pushed over HTTP; ``sdnotify`` systemd's notify protocol.
"""
