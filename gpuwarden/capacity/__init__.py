"""Capacity reports: what a GPU holds and what its work costs, read from the store.

``budget``: the per-GPU memory budget and per-server capacity, efficiency and cost that
``gpuwarden budget`` prints and ``/api/v1/budget`` serves. It reads stored series and
the derived signals of ``promql/derived.py``; it never collects.
"""
