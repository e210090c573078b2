"""When scrapers of /metrics are due (``api/scrape_forecast.py``)."""

from __future__ import annotations

from gpuwarden.api.scrape_forecast import MAX_SCRAPERS, ScrapeForecast


def test_one_scraper_is_due_within_a_cycle_of_its_period() -> None:
    forecast = ScrapeForecast()
    forecast.scraped("10.0.0.7", 100.0)
    assert not forecast.due(114.5, 1.0)  # one scrape: no period yet
    forecast.scraped("10.0.0.7", 115.0)
    assert not forecast.due(128.9, 1.0)
    assert forecast.due(129.1, 1.0)  # next at 130
    assert forecast.due(130.9, 1.0)  # late, by less than a cycle
    assert not forecast.due(131.1, 1.0)  # gone, or off its period: on demand again
    assert not forecast.due(120.0, 1.0)


def test_a_second_request_within_a_scrape_keeps_the_period() -> None:
    forecast = ScrapeForecast()
    for at in (0.0, 15.0, 15.1):  # a retry, or a person with curl from the same host
        forecast.scraped("10.0.0.7", at)
    assert forecast.due(29.6, 1.0)
    forecast.scraped("10.0.0.7", 30.1)
    assert forecast.due(44.6, 1.0) and not forecast.due(45.8, 0.5)


def test_two_scrapers_are_each_forecast_by_their_own_period() -> None:
    """Two Prometheus replicas, 15 s apart each, 4 s from one another: interleaved, the
    gaps between their scrapes (4, 11, 4, ...) are neither's period."""
    forecast = ScrapeForecast()
    for at in (0.0, 15.0):
        forecast.scraped("10.0.0.7", at)
        forecast.scraped("10.0.0.8", at + 4.0)
    assert forecast.due(29.5, 1.0) and forecast.due(33.5, 1.0)
    assert not forecast.due(25.0, 1.0) and not forecast.due(31.5, 1.0)


def test_scrapers_beyond_the_cap_forget_the_least_recent() -> None:
    forecast = ScrapeForecast()
    for at in (0.0, 10.0):
        forecast.scraped("old", at)
    for i in range(MAX_SCRAPERS):
        forecast.scraped(f"10.0.1.{i}", 11.0 + i * 0.01)
    assert not forecast.due(19.8, 0.5)  # "old" (next at 20) was forgotten
    forecast.scraped("old", 30.0)
    forecast.scraped("old", 40.0)
    assert forecast.due(49.8, 0.5)
