"""The headline numbers of a report, one row per system (the human leave-one-out last): what the CLI
prints and the gRPC result carries, so a client needs report.json only for the details."""

from __future__ import annotations

from typing import Any


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [*report.get("systems", [])]
    if report.get("human"):
        entries.append(report["human"])
    return [_row(entry["name"], entry["overall"]) for entry in entries]


def _row(name: str, overall: dict[str, Any]) -> dict[str, Any]:
    def value(metric: str, part: str = "mean") -> float:
        number = (overall.get(metric) or {}).get(part)
        return float("nan") if number is None else float(number)

    return {
        "name": name,
        "papers": int(overall.get("papers") or 0),
        "hits": value("hits"),
        "recall": value("recall"),
        "recall_low": value("recall", "low"),
        "recall_high": value("recall", "high"),
        "precision": value("precision"),
        "precision_low": value("precision", "low"),
        "precision_high": value("precision", "high"),
        "f1": value("f1"),
    }
