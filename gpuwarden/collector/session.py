"""The HTTP session the collectors scrape with: one connection kept per target.

``requests`` is the project's HTTP client; used as a browser would use it, it costs a
scraper on every request and every cycle:

* **Environment look-ups.** With ``trust_env`` (the default) every request looks for
  ``~/.netrc``, reads the proxy and CA-bundle variables and matches ``NO_PROXY``. The
  targets here are the node's own servers and exporters, on loopback or the node's
  address, which a proxy must not sit in front of; Prometheus, too, scrapes without the
  environment's proxy unless told. So the scrape session ignores the environment
  (``trust_env = False``). Deliveries to receivers (webhook, PagerDuty, Slack) do not use
  this session: they keep the environment's proxies (``daemon/wiring.py``).
* **New connections.** The session keeps one urllib3 pool per host:port, at most
  ``pool_connections`` of them, ten by default: a node with more servers than that evicts
  a pool every scrape and opens a new TCP connection for each (hundreds of sockets in
  TIME-WAIT at 16 servers). :data:`MAX_TARGETS` pools are kept; a pool holds
  :data:`CONNECTIONS_PER_TARGET` connections (a scrape, and a quality canary to the same
  port, may run at once).
* **Retries.** None (``max_retries=0``): a failed scrape is a ``server_up 0`` for this
  cycle, and the next cycle is the retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuwarden import __version__

if TYPE_CHECKING:
    import requests

#: The User-Agent of every scrape, through ``requests`` or libcurl.
SCRAPE_USER_AGENT = f"gpuwarden/{__version__}"
#: Distinct host:port targets whose connections are kept open between cycles.
MAX_TARGETS = 256
#: Connections kept per target: its scrape, and a canary request to the same server.
CONNECTIONS_PER_TARGET = 2


def scrape_session() -> requests.Session:
    """A session for scraping the node's servers and exporters (module docstring)."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.trust_env = False
    session.headers["User-Agent"] = SCRAPE_USER_AGENT
    adapter = HTTPAdapter(pool_connections=MAX_TARGETS, pool_maxsize=CONNECTIONS_PER_TARGET,
                          max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
