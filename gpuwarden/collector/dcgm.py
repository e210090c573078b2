"""GPU telemetry from NVIDIA dcgm-exporter's ``/metrics``, mapped to the canonical signals.

For nodes where DCGM already owns the GPUs (Kubernetes GPU operator, DCGM health checks),
``[gpu] source = "dcgm"`` reads what dcgm-exporter publishes instead of opening NVML a
second time. The output uses the same signals and labels as the NVML collector, so rules
and dashboards do not care which source fed them.

Mapping choices, and why:

* Labels are matched by name case-insensitively: dcgm-exporter renamed ``Hostname`` to
  ``hostname`` (PR #655) and ``UUID`` is ``uuid`` with ``--use-old-namespace``. The GPU
  index comes from ``gpu`` (else ``device="nvidia<N>"``), ``uuid`` from ``UUID`` and
  ``model`` from ``modelName``; ``node`` is gpuwarden's own, not the exporter's hostname.
* Only GPU entities are read: series carrying ``nvlink``, ``nvswitch``, ``cpu`` or
  ``cpucore`` labels (NvLink, NvSwitch, CPU entities) are ignored.
* MIG instances (``GPU_I_ID`` set) report memory only, as ``gpu="<index>/<GPU_I_ID>"`` —
  the same naming the NVML collector uses — and no ``gpu_up``.
* DCGM's blank / not-found / not-supported sentinels (int32 base ``0x7ffffff0``, int64 base
  ``0x7ffffffffffffff0``, fp64 base ``2**47``; older exporters printed them, e.g.
  ``9223372036854775794``) make a value absent. One threshold covers all three: no field
  mapped here can legitimately reach 2**31 - 16 (MiB, MHz, W, degrees, XID codes, ECC
  counts), so anything at or above it is treated as a sentinel.
* Units: percent -> ratio, MiB -> bytes, MHz -> Hz. Memory total is ``FB_TOTAL`` where the
  exporter publishes it, else ``FB_USED + FB_FREE + FB_RESERVED`` (the default counter set
  has no total; used excludes the reserved part, as NVML's v2 memory info does).
  Utilisation is ``DEV_GPU_UTIL`` where present, else ``PROF_GR_ENGINE_ACTIVE`` (already
  0..1; what DCGM offers on MIG and in DCP-only sets).
* ``gpu_memory_headroom_ratio`` is ``FB_FREE`` over that total, for a GPU and for a MIG
  instance alike (an instance's own free over its own total). An exporter too old to
  publish ``FB_RESERVED`` makes the total ``used + free``, short of the device's by the
  reserved part, and the ratio that much too high (0.7 % relative on an H100: 536 of
  81559 MiB).
* Bus width: DCGM has no field for it, so this source gives no
  ``gpu_memory_bus_width_bits`` and no peak bandwidth (use NVML for them). The maximum
  memory clock (``DCGM_FI_DEV_MAX_MEM_CLOCK``) is read when a custom counter set enables
  it; the default set does not.
* ``DCGM_FI_DEV_XID_ERRORS`` is the code of the *last* XID, not a count. The collector turns
  it into ``gpu_xid_errors_total`` by counting changes of that value to a new non-zero
  code (starting at 1 when the first scrape already shows one). A repeat of the same code
  between two scrapes is therefore missed: from this source the counter is a lower bound.
* ECC counters are off in dcgm-exporter's default set; when enabled, the volatile totals
  (``ECC_SBE_VOL_TOTAL`` / ``ECC_DBE_VOL_TOTAL``) are preferred, as the NVML collector uses,
  with the aggregate ones as fallback.
* A lost GPU cannot be told apart from one the exporter stopped listing, so this source
  never reports ``gpu_up 0``; a failed scrape raises ``ScrapeError`` (the daemon counts it
  as ``gpuwarden_collector_success{collector="dcgm"} 0``) and ``gpu_up`` is then absent.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable
from typing import Self

import requests

from gpuwarden.collector.base import Collector, GpuSettings
from gpuwarden.collector.httpbody import DEFAULT_MAX_BYTES, read_body
from gpuwarden.collector.promtext import parse
from gpuwarden.errors import ExpositionParseError, ScrapeError, ScrapeFailure
from gpuwarden.model import Labels, Sample, make_labels
from gpuwarden.native_memory import release_freed_memory

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MHZ = 1_000_000.0
SENTINEL_MIN = float(0x7FFFFFF0)  # DCGM_INT32_BLANK; int64 and fp64 blanks are larger
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"
_NON_GPU = frozenset({"nvlink", "nvswitch", "cpu", "cpucore"})
_DEVICE = re.compile(r"^nvidia(\d+)$")

# field -> (signal, scale); the first field of a group that has a value wins.
_SIMPLE: dict[str, list[tuple[str, float]]] = {
    "gpu_temperature_celsius": [("DCGM_FI_DEV_GPU_TEMP", 1.0)],
    "gpu_power_watts": [("DCGM_FI_DEV_POWER_USAGE", 1.0)],
    "gpu_power_limit_watts": [("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", 1.0),
                              ("DCGM_FI_DEV_POWER_MGMT_LIMIT", 1.0)],
    "gpu_sm_clock_hertz": [("DCGM_FI_DEV_SM_CLOCK", MHZ)],
    "gpu_memory_clock_hertz": [("DCGM_FI_DEV_MEM_CLOCK", MHZ)],
    "gpu_memory_clock_max_hertz": [("DCGM_FI_DEV_MAX_MEM_CLOCK", MHZ)],
    "gpu_utilization_ratio": [("DCGM_FI_DEV_GPU_UTIL", 0.01),
                              ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 1.0)],
    "gpu_throttle_reasons": [("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", 1.0),
                             ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", 1.0)],
}
_ECC = {
    "corrected": ["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"],
    "uncorrected": ["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"],
}
_FB = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED",
       "DCGM_FI_DEV_FB_TOTAL")
_XID = "DCGM_FI_DEV_XID_ERRORS"
FIELDS = tuple(sorted({f for group in _SIMPLE.values() for f, _ in group}
                      | {f for group in _ECC.values() for f in group} | set(_FB) | {_XID}))

_Entity = tuple[str, str, str, str]  # (gpu index, GPU instance id or "", uuid, model)


def is_sentinel(value: float) -> bool:
    """True for DCGM's blank / not-supported values (and NaN): the field is absent."""
    return math.isnan(value) or value >= SENTINEL_MIN


def _entity(labels: dict[str, str]) -> _Entity | None:
    """The GPU (or MIG instance) a series belongs to; None for other entities."""
    low = {k.lower(): v for k, v in labels.items()}
    if _NON_GPU & low.keys():
        return None
    index = low.get("gpu", "")
    if not index:
        m = _DEVICE.match(low.get("device", ""))
        if m is None:
            return None
        index = m.group(1)
    return index, low.get("gpu_i_id", ""), low.get("uuid", ""), low.get("modelname", "")


class DcgmCollector(Collector):
    """Scrapes dcgm-exporter and emits the canonical GPU signals; see the module docstring.

    ``scrape_errors_total`` counts failures by reason (``connection``, ``timeout``,
    ``http_status``, ``oversize``, ``parse``) and ``last_error`` says the latest one.
    """

    name = "dcgm"
    #: Every reason ``scrape_errors_total`` counts (``_fetch``, ``collect``, and
    #: ``httpbody``'s), exported at 0 from the start.
    scrape_error_reasons = ("connection", "http_status", "oversize", "parse",
                            "parse_timeout", "timeout")

    def __init__(
        self,
        node: str,
        url: str,
        session: requests.Session,
        timeout: float = 2.0,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.node = node
        self.url = url
        self.session = session
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.scrape_errors_total: dict[str, int] = {}
        self.parse_errors_total = 0  # bad lines inside payloads that were still used
        self.last_error: str | None = None
        self._last_xid: dict[str, float] = {}
        self._xid_total: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: GpuSettings) -> Self:
        """``[gpu] source = "dcgm"``: scrape ``dcgm_url`` with the daemon's HTTP session."""
        if settings.session is None:
            raise ValueError("the dcgm GPU source needs an HTTP session")
        return cls(settings.node, settings.dcgm_url, settings.session, timeout=settings.timeout)

    # --- scrape ------------------------------------------------------------------------

    def _fail(self, reason: str, detail: str) -> ScrapeError:
        self.scrape_errors_total[reason] = self.scrape_errors_total.get(reason, 0) + 1
        self.last_error = f"{reason}: {detail}"
        return ScrapeError(f"dcgm-exporter {self.url}: {reason}: {detail}")

    def _fetch(self) -> bytes:
        """The body, read within ``timeout`` and ``max_bytes`` (an exporter can hang mid-body)."""
        try:
            resp = self.session.get(self.url, timeout=self.timeout, stream=True,
                                    headers={"Accept": _ACCEPT})
        except requests.Timeout as exc:
            raise self._fail("timeout", str(exc)) from exc
        except requests.RequestException as exc:
            raise self._fail("connection", str(exc)) from exc
        with resp:
            if not 200 <= resp.status_code < 300:
                raise self._fail("http_status", f"HTTP {resp.status_code} {resp.reason}")
            try:
                return read_body(resp, self.max_bytes, self.timeout)
            except ScrapeFailure as exc:
                raise self._fail(exc.reason, exc.detail) from exc
            except (requests.RequestException, OSError) as exc:
                raise self._fail("connection", str(exc)) from exc

    def collect(self) -> Iterable[Sample]:
        body = self._fetch()
        ts = time.time()
        size = len(body)
        mentions_dcgm = not body.strip() or b"DCGM_" in body
        try:
            exposition = parse(body, max_bytes=self.max_bytes)
        except ExpositionParseError as exc:
            raise self._fail("parse", str(exc)) from exc
        finally:
            del body
        release_freed_memory(size)
        self.parse_errors_total += exposition.invalid_lines
        if exposition.truncated:  # what was parsed in time is used; the rest is counted
            self.scrape_errors_total["parse_timeout"] = (
                self.scrape_errors_total.get("parse_timeout", 0) + 1)
        values: dict[_Entity, dict[str, float]] = {}
        seen: set[_Entity] = set()
        for field in FIELDS:
            for labels, value in exposition.get(field):
                entity = _entity(labels)
                if entity is None:
                    continue
                seen.add(entity)
                # Kubernetes mode repeats a GPU's value once per pod: the first one wins.
                if not is_sentinel(value):
                    values.setdefault(entity, {}).setdefault(field, value)
        if not seen and not mentions_dcgm:
            raise self._fail("parse", "no DCGM metric in the payload (not dcgm-exporter?)")
        self.last_error = None
        out: list[Sample] = []
        for entity in sorted(seen, key=_order):
            out.extend(self._map(entity, values.get(entity, {}), ts))
        return out

    # --- mapping -----------------------------------------------------------------------

    def _labels(self, entity: _Entity, **extra: str) -> Labels:
        index, gi, uuid, model = entity
        gpu = f"{index}/{gi}" if gi else index
        return make_labels(node=self.node, gpu=gpu, uuid=uuid, model=model, **extra)

    def _map(self, entity: _Entity, v: dict[str, float], ts: float) -> list[Sample]:
        labels = self._labels(entity)
        out: list[Sample] = []
        used, free = v.get("DCGM_FI_DEV_FB_USED"), v.get("DCGM_FI_DEV_FB_FREE")
        total = v.get("DCGM_FI_DEV_FB_TOTAL")
        if total is None and used is not None and free is not None:
            total = used + free + v.get("DCGM_FI_DEV_FB_RESERVED", 0.0)
        if used is not None:
            out.append(Sample("gpu_memory_used_bytes", labels, used * MIB, ts))
        if total is not None:
            out.append(Sample("gpu_memory_total_bytes", labels, total * MIB, ts))
        if free is not None and total:
            out.append(Sample("gpu_memory_headroom_ratio", labels, free / total, ts))
        if entity[1]:  # a MIG instance: memory only (see the module docstring)
            return out
        out.insert(0, Sample("gpu_up", labels, 1.0, ts))
        for signal, fields in _SIMPLE.items():
            for field, scale in fields:
                if field in v:
                    out.append(Sample(signal, labels, v[field] * scale, ts))
                    break
        for kind, ecc_fields in _ECC.items():
            for field in ecc_fields:
                if field in v:
                    out.append(Sample("gpu_ecc_errors_total", self._labels(entity, type=kind),
                                      v[field], ts))
                    break
        if _XID in v:
            out.append(Sample("gpu_xid_errors_total", labels, self._xid(entity, v[_XID]), ts))
        return out

    def _xid(self, entity: _Entity, code: float) -> float:
        """Count changes of the last-XID field into a counter (a lower bound, see above)."""
        key = f"{entity[0]}|{entity[2]}"
        previous = self._last_xid.get(key)
        total = self._xid_total.get(key, 0)
        if code and code != previous:
            total += 1
            if previous is not None:
                log.warning("GPU %s (%s): XID %d (from dcgm-exporter)", entity[0], entity[2],
                            int(code))
        self._last_xid[key], self._xid_total[key] = code, total
        return float(total)


def _order(entity: _Entity) -> tuple[int, str, str]:
    index = int(entity[0]) if entity[0].isdigit() else -1
    return index, entity[1], entity[2]
