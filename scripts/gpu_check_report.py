"""The summary table of scripts/gpu_check.sh: one row per check (name, result, figure, note).

Reads the rows file the script appends to, one tab-separated line per step:

    name  kind  result  path  note  [seconds]  [expect]

kind is `plain` (the step's own result), `pytest` (path: a junit XML file, one
row per test), `bench` (path: a `vla-ros bench --json` file; figures are its
optimised medians; expect=ENGINE also requires that prefix engine and zero K/V
copies) or `compare` (path: "GRAPH.json,EAGER.json"; the suffix medians'
ratio). Prints the table and a count line; exits 1 when any row is FAIL.
Standard library only, so it runs wherever the script does.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys
import xml.etree.ElementTree as ElementTree

NOISE_MARGIN = 0.05  # a CUDA graph within 5% of eager counts as not slower


def _cell(text: str) -> str:
    return " ".join(str(text).replace("|", "/").split())


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _load(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def pytest_rows(name: str, result: str, path: str, note: str) -> list[tuple[str, str, str, str]]:
    """One row per test case of a junit XML file (or one row for the step when there is none)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return [(name, "FAIL" if result != "SKIP" else "SKIP", "", note or f"no test report at {path}")]
    rows = []
    for case in root.iter("testcase"):
        figure = f"{float(case.get('time', 0)):.1f} s"
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            rows.append((case.get("name"), "FAIL", figure, failed.get("message", "")[:160]))
        elif skipped is not None:
            rows.append((case.get("name"), "SKIP", "", skipped.get("message", "")[:160]))
        else:
            rows.append((case.get("name"), "PASS", figure, case.get("classname", "")))
    if not rows:
        rows.append((name, "FAIL" if result == "FAIL" else "SKIP", "", note or "no tests collected"))
    return rows


def bench_row(name: str, result: str, path: str, note: str, expect: str) -> tuple[str, str, str, str]:
    payload = _load(path) if result == "PASS" else None
    if payload is None:
        return name, "FAIL" if result != "SKIP" else "SKIP", "", note or f"no benchmark figures in {path}"
    medians = payload["results"]["optimised"]
    stages = ("prefix", _second_stage(medians), "total")
    figure = ", ".join(f"{stage} p50 {_ms(medians[stage]['p50'])}" for stage in stages)
    info = payload["info"]["optimised"]
    prefix = info.get("prefix", "?")
    providers = info.get("prefix_providers")
    copies = info.get("prefix_copied_outputs")
    details = [f"prefix {prefix}" + (f" ({providers[0]})" if providers else ""),
               f"suffix {info.get('suffix', '?')}" if "suffix" in medians
               else f"decode {info.get('decode', '?')}",
               f"{info.get('cuda_stream') or 'no'} CUDA stream"]
    if copies is not None:
        details.append(f"{copies} K/V copies")
    rtc = payload["results"].get("optimised_rtc")
    if rtc and "suffix" in medians:  # the same run's Real-Time-Chunking-guided suffix
        guided = rtc["suffix"]["p50"]
        details.append(f"RTC {payload['info'].get('rtc', {}).get('mode', '?')} suffix {_ms(guided)} = "
                       f"{guided / medians['suffix']['p50']:.2f}x unguided")
    if note:
        details.append(note)
    result = "PASS"
    if expect and prefix != expect:
        result = "FAIL"
        details.insert(0, f"expected prefix {expect} but ran {prefix} (a fallback: see the step's log)")
    elif expect and copies:
        result = "FAIL"
        details.insert(0, f"{copies} K/V outputs were copied, not written by address")
    return name, result, figure, "; ".join(details)


def _second_stage(medians: dict) -> str:
    """What follows the prefix: the suffix (flow matching) or, for decode models, the time per token."""
    return "suffix" if "suffix" in medians else "per_token"


def compare_row(name: str, result: str, path: str, note: str) -> tuple[str, str, str, str]:
    graph_path, _, eager_path = path.partition(",")
    graph, eager = _load(graph_path), _load(eager_path)
    if result == "SKIP" or graph is None or eager is None:
        missing = note or "a side of the comparison did not run"
        return name, "SKIP" if result == "SKIP" else "FAIL", "", missing
    stage = _second_stage(graph["results"]["optimised"])
    fast = graph["results"]["optimised"][stage]["p50"]
    slow = eager["results"]["optimised"][stage]["p50"]
    ratio = slow / fast if fast > 0 else float("inf")
    figure = f"{stage} p50 graph {_ms(fast)} vs eager {_ms(slow)}: {ratio:.2f}x"
    ok = ratio >= 1.0 - NOISE_MARGIN
    note = note or ("" if ok else "the CUDA graph is slower than eager")
    return name, "PASS" if ok else "FAIL", figure, note


def rows_from(lines: list[str]) -> list[tuple[str, str, str, str]]:
    rows = []
    for line in lines:
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t") + [""] * 7
        name, kind, result, path, note, seconds, expect = fields[:7]
        if kind == "pytest":
            rows.extend(pytest_rows(name, result, path, note))
        elif kind == "bench":
            rows.append(bench_row(name, result, path, note, expect))
        elif kind == "compare":
            rows.append(compare_row(name, result, path, note))
        else:
            rows.append((name, result, f"{float(seconds):.1f} s" if seconds else "", note))
    return rows


def render(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("check", "result", "figure", "note")
    cells = [header] + [tuple(_cell(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]

    def line(row) -> str:
        return "| " + " | ".join(text.ljust(width) for text, width in zip(row, widths)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells[1:]]
    counts = {result: sum(1 for row in rows if row[1] == result) for result in ("PASS", "FAIL", "SKIP")}
    out.append(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: gpu_check_report.py ROWS.tsv", file=sys.stderr)
        return 2
    rows = rows_from(Path(argv[0]).read_text().splitlines())
    print(render(rows))
    return 1 if any(row[1] == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
