"""labo-bench hf on a tiny shape: the table, JSON and CSV it writes (not a timing)."""
import csv
import json

from labo_fairseq.cli import bench


def test_labo_bench_hf_writes_side_by_side_ratios(tmp_path, capsys):
    out_json, out_csv = tmp_path / "hf.json", tmp_path / "hf.csv"
    status = bench(["hf", "--vocab", "300", "--batch", "2", "--tgt-len", "8", "--src-len", "6", "--d-model", "16",
                    "--ffn", "32", "--layers", "1", "--repeats", "1", "--iters", "1", "--threads", "1",
                    "--json", str(out_json), "--csv", str(out_csv)])
    assert status == 0
    table = capsys.readouterr().out
    assert "memory vs hf-ls" in table and "labo-fused" in table and "V=300" in table
    result = json.loads(out_json.read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {"hf-ls", "labo-unfused", "labo-fused"}
    assert rows["hf-ls"]["time_vs_hf_ls"] == 1.0
    assert all(row["ms"] > 0 and row["peak_mib"] >= 0 for row in rows.values())
    assert "VmHWM" in result["memory_measure"] and result["machine"]
    with open(out_csv) as f:
        assert [row["variant"] for row in csv.DictReader(f)] == ["hf-ls", "labo-unfused", "labo-fused"]


def test_labo_bench_hf_bad_flag_is_one_line(capsys):
    try:
        status = bench(["hf", "--variants", "labo-fused"])
    except SystemExit as done:
        status = done.code
    assert status == 2
    assert "hf-ls (the baseline) is needed" in capsys.readouterr().err
