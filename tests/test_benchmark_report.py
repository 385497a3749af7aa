"""The helpers the benchmark scripts share (benchmarks/_report.py): BENCHMARKS.md writing, the CPU description and
the fresh-process runner."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("_report", REPO / "benchmarks" / "_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_block_replaces_only_its_own_table(report, tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    by_hand = "# Benchmarks\n\nkept by hand\n\n<!-- other:start -->\n\nother figures\n\n<!-- other:end -->"
    path.write_text(by_hand + "\n")
    report.replace_model_block(path, "kinetics-sounds/cpu", "### model table, first run")
    report.replace_model_block(path, "startup/cpu", "### start-up table")
    report.replace_model_block(path, "kinetics-sounds/cpu", "### model table, second run")
    text = path.read_text()
    assert text.startswith(by_hand + "\n")
    assert "first run" not in text
    assert text.count("<!-- bench_model:start -->") == 1 and text.count("<!-- bench_model:end -->") == 1
    model = text.index("<!-- bench_model:block kinetics-sounds/cpu start -->\n### model table, second run\n")
    startup = text.index("<!-- bench_model:block startup/cpu start -->\n### start-up table\n")
    assert model < startup < text.index("<!-- bench_model:end -->")


def test_sections_with_broken_markers_are_refused(report, tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    original = "# Benchmarks\n<!-- bench_data:start -->\nold\n<!-- bench_data:start -->\n<!-- bench_data:end -->\n"
    path.write_text(original)
    with pytest.raises(ValueError, match="bench_data:start"):
        report.replace_section(path, "bench_data", "new")
    path.write_text("# Benchmarks\n<!-- bench_model:start -->\nno end\n")
    with pytest.raises(ValueError, match="unbalanced"):
        report.replace_model_block(path, "startup/cpu", "new")


def test_cpu_description_names_the_model_and_the_vector_extensions(report):
    description = report.describe_cpu()
    assert description.startswith(report.cpu_model())
    for flag in ("avx512f", "avx512_bf16", "amx_bf16"):
        assert f"{flag} {'yes' if flag in report.cpu_flags() else 'no'}" in description


def test_fresh_process_imports_the_helpers_and_reports_its_memory(report):
    code = "import json; from _report import proc_status_mib; print(json.dumps([proc_status_mib('VmHWM'), 1]))"
    peak, one = report.run_python(code)
    assert one == 1
    if Path("/proc/self/status").exists():
        assert peak > 1
