"""`labo-bench kernels`: the offline compile report (no GPU) and its SASS loop parser."""
import json

import pytest

from labo_fairseq.benchmarks import kernels

pytest.importorskip("triton", reason="the compile report needs the triton package")

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   NOP ;
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   MUFU.EX2 R5, R4 ;
        /*0040*/              @!P0 BRA 0x20 ;
        /*0050*/                   STG.E [R2.64], RZ ;
        /*0060*/                   STG.E [R2.64+0x4], RZ ;
        /*0070*/               @P1 BRA 0x50 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
"""


def test_sass_loops_are_found_and_only_loops_that_read_memory_stream():
    instructions = kernels.parse_sass(LISTING)
    assert [op for _, op, _ in instructions][:3] == ["MOV", "LDG.E.128", "MUFU.EX2"]  # NOP left out
    loops = kernels.streaming_loops(instructions)
    # 0x20..0x40 reads global memory; 0x50..0x70 only stores (a zeroing loop); BRA 0x90 to itself is no loop
    assert [(l["start"], l["end"], l["instructions"], l["global_loads"], l["mufu"]) for l in loops] == [
        (0x20, 0x40, 3, 1, 1), (0x50, 0x70, 3, 0, 0)]


def test_every_shipped_configuration_compiles_for_sm_90_without_spills(tmp_path):
    try:
        kernels.toolchain()
    except kernels.ToolchainError as exc:
        pytest.skip(f"no offline compile here: {exc}")
    out = tmp_path / "k.json"
    assert kernels.main(["--arch", "sm_90", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ours = [row for row in result["rows"] if not row["name"].startswith("liger")]
    # 3 kernels x 4 modes x 3 dtypes, each at the launcher's block width and warp count
    assert len(ours) == 36 and {row["block_v"] for row in ours} == {32768}
    spilling = [(row["name"], row["info"]["mode"], row["dtype"], row["spill_bytes"]) for row in ours
                if row["spill_bytes"] > 0]
    assert spilling == []
    assert all(row["registers"] > 0 and row["sass_per_element"] > 0 for row in ours)
    for row in ours:  # every streaming kernel has exps to do, none of a pass's loop is missed
        assert row["mufu_per_element"] >= 1, row
    liger = [row for row in result["rows"] if row["name"].startswith("liger")]
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        assert liger == [] and any("Liger" in note for note in result["notes"])
    else:
        assert len(liger) == 3 and all(row["sass_per_element"] > 0 for row in liger)


def test_missing_toolchain_is_one_line(monkeypatch, capsys):
    from labo_fairseq.cli import bench

    def missing():
        raise kernels.ToolchainError("the triton wheel has no ptxas")

    monkeypatch.setattr(kernels, "toolchain", missing)
    assert bench(["kernels", "--dtypes", "bf16"]) == 2
    assert capsys.readouterr().err.strip() == \
        "labo-bench: error: cannot compile offline: the triton wheel has no ptxas"
