"""The offline performance model (``triton_dsd.perf_model``, ``triton-dsd model``): SASS reading,
loop weighting, occupancy, and one real case compiled for sm_90 end to end."""
import json
import math

from triton_dsd import perf_model as pm

from helpers import run_fresh


def run_cli(*argv):
    """The CLI in a fresh process without the interpreter (the model compiles for sm_90)."""
    return run_fresh("-m", "triton_dsd.cli", *argv)

# a hand-written listing in cuobjdump's format: two nested loops and the trap loop after EXIT
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   FFMA R8, R4, R5, R8 ;
        /*0030*/                   LDG.E.U16 R9, desc[UR4][R2.64] ;
        /*0040*/                   FFMA R8, R4, R5, R8 ;
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0060*/               @P0 BRA 0x40 ;
        /*0070*/               @P1 BRA 0x20 ;
        /*0080*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
"""


def test_loops_are_backward_branches_in_program_order():
    ins = pm.parse_sass(SASS)
    assert len(ins) == 11
    assert pm.loops(ins) == [(0x20, 0x70), (0x40, 0x60)]  # outer first; the trap is no loop


def test_instructions_weighted_by_trip_counts():
    ins = pm.parse_sass(SASS)
    mix, total, matched, in_flight = pm.weigh(ins, [10, 5])
    assert matched
    # outside: MOV, LDG.128, STG, EXIT = 4; outer only: FFMA, LDG.U16, BRA(outer) = 3 x 10;
    # inner: FFMA, HGMMA, BRA(inner) = 3 x 10 x 5
    assert total == 4 + 3 * 10 + 3 * 50
    assert mix["ffma"] == 10 + 50 and mix["hgmma"] == 50
    assert mix["ldg16"] == 1 and mix["ldg2"] == 10
    # bytes in flight: the loads of the region that moves the most (the outer loop: 2 bytes x
    # 10 trips, against 16 bytes once outside); the inner loop loads nothing
    assert in_flight == 2
    assert pm.weigh(ins, [3, 5])[3] == 16
    _, _, matched, _ = pm.weigh(ins, [3])
    assert not matched  # fewer trip counts than loops: flagged, never silently weighted


def test_wide_rows_loop_over_tap_groups():
    """Rows of more than ROW_LOOP_TAPS taps have one loop over their whole tap groups (8 taps
    of scalar columns, 4 of channel vectors); the input gradient's only where a group moves
    by whole dy columns; narrower rows unroll (no loop)."""
    a = dict(KH=1, KW=87, STRIDE_W=1, DIL_W=2, BLOCK_R=128, BLOCK_C=1, MULT=1)
    assert pm._dw_fwd_trips(a) == [87 // 8] and pm._dw_dx_trips(a) == [87 // 8]
    assert pm._dw_fwd_trips(dict(a, BLOCK_C=64)) == [87 // 4]
    assert pm._dw_dx_trips(dict(a, BLOCK_C=64, MULT=2)) == [87 // 4] * 2
    assert pm._dw_dx_trips(dict(a, BLOCK_C=64, STRIDE_W=3, DIL_W=1)) == []  # 4 % 3: unrolled
    assert pm._dw_fwd_trips(dict(a, KW=31)) == []


def test_occupancy_from_registers_shared_memory_and_warps():
    assert pm.occupancy(32, 4, 0) == (16, 64)  # warp-limited: 64 warps a SM
    assert pm.occupancy(128, 4, 0) == (4, 16)  # 65536 registers / (128 x 128 threads)
    assert pm.occupancy(255, 8, 0) == (1, 8)
    assert pm.occupancy(64, 4, 100 * 1024) == (2, 8)  # two 100 KiB blocks fit 228 KiB


def test_valid_taps_counts_padding_out():
    # 5 outputs of K3 'same' (pad 1): the two border outputs lose a tap
    assert pm._valid_taps(5, 5, 3, 1, 1, 1) == 5 * 3 - 2
    assert pm._valid_taps(4, 4, 1, 1, 0, 1) == 4


def test_canonical_cases_cover_the_issue_matrix():
    cases = pm.canonical_cases()
    names = {c.name for c in cases}
    assert len(names) == len(cases)
    ps = [c.problem for c in cases]
    assert {p.dim for p in ps} == {1, 2} and {p.layout for p in ps} == {"cl", "nchw"}
    assert {3, 5, 7, 13, 31} <= {p.K for p in ps} and {1, 2, 4} <= {p.dilation for p in ps}
    assert {128, 256, 512, 1024} <= {p.C for p in ps}
    assert {"dw_fwd", "dw_dx", "dw_dw", "pw_fwd", "fused_fwd", "fused_fwd_bn",
            "fused_fwd_bn_relu", "fused_fwd_ln", "layer", "step"} == {c.op for c in cases}
    # decode steps: 1..256 streams, C = M 256..1024
    steps = [c.problem for c in cases if c.op == "step"]
    assert {1, 256} <= {p.N for p in steps} and {256, 1024} <= {p.C for p in steps}
    # speech models' large 1D kernels (rows that loop over their tap groups)
    assert {33, 87} <= {p.K for p in ps if p.dim == 1}


def test_model_cli_end_to_end(tmp_path):
    """`triton-dsd model` compiles a real case for sm_90, weights its loops, writes the JSON and
    the figure, and labels its table a model."""
    out, fig = tmp_path / "m.json", tmp_path / "m.png"
    case = "dw fwd 1D NLC L4096 C256 K4"
    r = run_cli("model", "--cases", case, "--json-out", str(out), "--figure", str(fig))
    assert r.returncode == 0, r.stderr
    assert "MODEL, not a measurement" in r.stdout
    data = json.loads(out.read_text())
    (c,) = data["cases"]
    assert c["case"] == case and not c["error"]
    (launch,) = c["launches"]
    assert launch["kernel"] == "depthwise_fwd_kernel" and launch["loops_matched"]
    assert launch["regs"] > 0 and launch["resident_warps"] > 0
    # the ideal bytes: x in, y out (bf16, 8 x 256 x 4096 each), the weight and bias
    assert launch["ideal_bytes"] == 2 * (2 * 8 * 256 * 4096) + 2 * 256 * 4 + 2 * 256
    assert math.isclose(c["modeled_us"], launch["modeled_s"] * 1e6)
    assert 0 < c["pct_roofline"] <= 100 and c["instr_per_output"] > 4  # at least the K FFMAs
    assert fig.stat().st_size > 10_000
    # a baseline gives before/after columns
    r = run_cli("model", "--cases", case, "--baseline", str(out))
    assert r.returncode == 0 and "before %" in r.stdout


def test_step_model_counts_the_bytes_floor_and_matches_its_loops(tmp_path):
    """A decode step's ideal bytes are ``cost.step_cost``'s floor (not the workspace, not the
    whole state), and its loops match the SASS."""
    from triton_dsd import cost
    out = tmp_path / "s.json"
    r = run_cli("model", "--cases", "step N16 C=M=1024 K4", "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    (c,) = json.loads(out.read_text())["cases"]
    (launch,) = c["launches"]
    assert not c["error"] and c["spill_bytes"] == 0
    assert launch["kernel"] == "dsd_step_kernel" and launch["loops_matched"]
    assert launch["ideal_bytes"] == cost.step_cost(16, 1024, 1024, 4, 1, 1, True, 2).bytes_fused
    assert 0 < c["pct_roofline"] <= 100


def test_model_cli_rejects_unknown_case():
    r = run_cli("model", "--cases", "no such case")
    assert r.returncode == 2 and "matches no case" in r.stderr
