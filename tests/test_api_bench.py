"""The API benchmark's reading of wrk's report (the harness, not the server)."""

from __future__ import annotations

from bench.api_bench import Load, parse_wrk, table

WRK_REPORT = """\
Running 10s test @ https://127.0.0.1:41537/v1/rules
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.81ms    4.50ms  57.31ms   78.46%
    Req/Sec     1.65k   301.12     2.20k    71.00%
  Latency Distribution
     50%    9.28ms
     75%   11.80ms
     90%   14.95ms
     99%   17.91ms
  16599 requests in 10.10s, 6.35MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1643.47
Transfer/sec:    643.76KB
"""


def test_a_wrk_report_becomes_throughput_latency_failures_and_cpu():
    """Percentiles in any unit, socket errors and non-2xx both count as failed."""
    load = parse_wrk("writes", WRK_REPORT, cpu_seconds=10.76)
    assert (load.requests, load.seconds, load.rps) == (16599, 10.1, 1643.5)
    assert (load.p50_ms, load.p99_ms) == (9.28, 17.91)
    assert load.failed == 4 + 2 + 1
    assert load.cpu_us_per_request == 648.2


def test_microsecond_latencies_are_converted_to_milliseconds():
    """wrk prints fast percentiles in us."""
    report = WRK_REPORT.replace("9.28ms", "723.00us").replace("17.91ms", "2.42s")
    load = parse_wrk("hello", report, cpu_seconds=0.0)
    assert (load.p50_ms, load.p99_ms) == (0.723, 2420.0)
    assert "| hello | 1,644 | 0.723 | 2420.0 | 7 | 0 |" in table([load])


def test_rounds_are_summarized_as_median_and_range_and_checked_against_the_goals():
    """The goal table reads the medians, so one lucky round cannot meet a goal."""
    from bench.api_bench import goals_table, summarize, summary_table

    def load(name: str, rps: float) -> Load:
        return Load(name, int(rps * 10), 10.0, rps, 1.0, 2.0, 7, 300.0)

    writes, reads = "API: create rule (audited write)", "API: get rule by id (read)"
    rounds = [
        [load(writes, w), load(reads, r)] for w, r in ((2900, 4000), (3100, 5200), (3050, 4900))
    ]
    summary = summarize(rounds)
    assert [s.median_rps for s in summary] == [3050, 4900]
    assert "| API: create rule (audited write) | 3,050 | 2,900-3,100 | 21 |" in summary_table(
        summary
    )
    during = load("writes during", 2000)
    during.extra = {"vs_alone": 0.69}
    goals = goals_table(summary, [during])
    assert "| API: create rule (audited write), median req/s | 3,050 | 3,000 | yes |" in goals
    assert "| API: get rule by id (read), median req/s | 4,900 | 5,000 | no |" in goals
    assert "| writes during online backups / alone | 0.69 | 0.70 | no |" in goals
