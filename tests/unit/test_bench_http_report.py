"""The app proxy's HTTP figures in the benchmark report: ratios to direct and to CHP."""

from __future__ import annotations

from typing import Any

import pytest
from bench import report


def _figures(rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": 100}


def _results(*keys: str) -> dict[str, Any]:
    figures = {
        "direct": _figures(400.0, 2.0, 10.0),
        "chp": _figures(200.0, 4.0, 20.0),
        "kuberde": _figures(100.0, 8.0, 40.0),
    }
    labels = {"direct": "direct", "chp": "configurable-http-proxy", "kuberde": "KubeRDE app proxy"}
    return {
        "http": {
            "paths": {key: {"label": labels[key], "note": ""} for key in keys},
            "clients": {"small": 4, "large": 4},
            "small": {key: figures[key] for key in keys},
            "large": {key: {**figures[key], "mb_s": figures[key]["rps"]} for key in keys},
        }
    }


def test_ratios_are_to_direct_and_to_chp() -> None:
    cut = report.ratios(_results("direct", "chp", "kuberde"))
    for load in ("small", "large"):
        assert cut[f"http_{load}_rps"] == {"kuberde/direct": 0.25, "kuberde/chp": 0.5}
        assert cut[f"http_{load}_p50"] == {"kuberde/direct": 4.0, "kuberde/chp": 2.0}
        assert cut[f"http_{load}_p99"] == {"kuberde/direct": 4.0, "kuberde/chp": 2.0}


def test_a_run_without_chp_has_no_chp_ratio() -> None:
    cut = report.ratios(_results("direct", "kuberde"))
    assert cut["http_small_rps"] == {"kuberde/direct": 0.25, "kuberde/chp": None}


@pytest.mark.parametrize("keys", [("direct", "chp", "kuberde"), ("direct", "kuberde")])
def test_render_shows_a_row_per_path_and_load(keys: tuple[str, ...]) -> None:
    text = report.render(_results(*keys))
    assert "HTTP small GET (128 B)" in text
    assert "HTTP 10 MB download" in text
    label = "KubeRDE app proxy"
    small, large = (line for line in text.splitlines() if line.startswith(label))
    to_chp = "0.50" if "chp" in keys else "—"
    p50_to_chp = "2.00" if "chp" in keys else "—"
    ratios = ["0.25", to_chp, "4.00", p50_to_chp]
    assert small.removeprefix(label).split() == ["100.0", "8.00", "40.00", *ratios]
    assert large.removeprefix(label).split() == ["100.0", "100.0", "8.00", "40.00", *ratios]


def test_no_http_section_no_http_ratios() -> None:
    assert not any(key.startswith("http") for key in report.ratios({}))
