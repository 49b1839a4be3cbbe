"""``run_cli_peak`` (the ``edgeseg`` wrapper of benchmarks/refdiff_memory.py and refdiff_full_builds.py): the
child's exit status and output come back, with its peak RSS parsed from the wrapper's last line."""

from __future__ import annotations

from edgeseg.export.bench.memory import PEAK_MARKER, run_cli_peak


def test_failing_command_keeps_status_message_and_peak(tmp_path):
    missing = tmp_path / "no_bundle"
    r = run_cli_peak(["build", str(missing), "--precision", "fp16", "--out", str(tmp_path / "out")])
    assert r.rc == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"edgeseg build: error: bundle folder '{missing}' not found")
    assert r.peak_rss_mb is not None and 10 < r.peak_rss_mb < 100_000
    assert r.stdout.splitlines()[-1] == f"{PEAK_MARKER}{r.peak_rss_mb!r}"
    assert r.seconds > 0


def test_help_exits_zero_with_its_text_on_stdout():
    r = run_cli_peak(["--help"])
    assert r.rc == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: edgeseg") and r.stdout.splitlines()[-1].startswith(PEAK_MARKER)
    assert r.peak_rss_mb is not None and r.peak_rss_mb > 10
