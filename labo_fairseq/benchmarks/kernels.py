"""Compile report of the Triton kernels for a GPU architecture, without a GPU.

Every kernel configuration the Triton implementation launches (`functional.triton_configs.shipped_configs`)
is compiled offline with Triton's compiler for the chosen architecture (sm_90 = H100/H200,
sm_80 = A100); its PTX is assembled with the `ptxas` that ships inside the triton wheel and
the result is disassembled with the wheel's `cuobjdump`. Per configuration the table gives:

  registers         registers per thread (ptxas)
  spill_bytes       bytes of register spill stores + loads per thread (ptxas); 0 is the target
  shared            shared memory per program in bytes (Triton's compile metadata)
  sass_per_element  SASS instructions per logit element in the streaming loops: for every
                    loop that reads global memory, its instruction count divided by the
                    elements one thread handles per iteration (BLOCK_V / (32 * num_warps)),
                    summed over those loops (a row's stats pass, its gradient pass, ...)
  mufu_per_element  the same for the MUFU (exp2, log2, reciprocal) instructions alone

With liger-kernel installed, Liger's cross-entropy kernel is compiled the same way at the
block size and warp count its launcher picks for the vocabulary (rows named `liger...`), as
the reference for the instruction count. These are compile-time figures, not GPU timings.

    labo-bench kernels --arch sm_90 --json kernels.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # imported where used: the module must load without triton
    from labo_fairseq.functional.triton_configs import KernelSpec

ARCHES = {"sm_90": 90, "sm_80": 80}
# the SASS loop detector: "/*0740*/  @!P0 BRA 0x740 ;"
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);")


class ToolchainError(RuntimeError):
    """The triton wheel lacks what an offline compile needs."""


@dataclass
class CompileReport:
    name: str
    kernel: str
    dtype: str
    block_v: int
    num_warps: int
    registers: int
    spill_bytes: int
    shared: int
    sass_per_element: float
    mufu_per_element: float
    loops: List[Dict[str, object]]
    info: Dict[str, object]


def toolchain() -> Dict[str, Path]:
    """ptxas and cuobjdump from the triton wheel's NVIDIA backend."""
    try:
        import triton
    except ImportError as exc:
        raise ToolchainError(f"triton does not import ({exc})") from None
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    tools = {name: bin_dir / name for name in ("ptxas", "cuobjdump")}
    missing = [str(path) for path in tools.values() if not os.access(path, os.X_OK)]
    if missing:
        raise ToolchainError(f"the triton wheel has no {', '.join(missing)}")
    return tools


def _attrs(spec: KernelSpec):
    names = list(spec.signature)
    return {(names.index(name),): [["tt.divisibility", 16]] for name in spec.aligned}


def compile_ptx(spec: KernelSpec, arch: int) -> Tuple[str, int]:
    """(PTX, shared memory bytes) of one configuration, compiled for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=_attrs(spec))
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec.num_warps})
    return compiled.asm["ptx"], int(compiled.metadata.shared)


def assemble(ptx: str, tools: Dict[str, Path], workdir: Path) -> Tuple[Dict[str, int], str]:
    """ptxas resource usage ({registers, spill_stores, spill_loads}) and the SASS listing."""
    target = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)  # sm_90a, sm_80, ...
    ptx_path, cubin_path = workdir / "kernel.ptx", workdir / "kernel.cubin"
    ptx_path.write_text(ptx)
    run = subprocess.run([str(tools["ptxas"]), f"-arch={target}", "-v", str(ptx_path), "-o", str(cubin_path)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise ToolchainError(f"ptxas failed: {run.stderr.strip().splitlines()[-1:]}")
    usage = {"registers": _first_int(r"Used (\d+) registers", run.stderr),
             "spill_stores": _first_int(r"(\d+) bytes spill stores", run.stderr),
             "spill_loads": _first_int(r"(\d+) bytes spill loads", run.stderr)}
    sass = subprocess.run([str(tools["cuobjdump"]), "-sass", str(cubin_path)], capture_output=True, text=True,
                          check=True).stdout
    return usage, sass


def _first_int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def parse_sass(listing: str) -> List[Tuple[int, str, str]]:
    """(address, opcode, operands) of every instruction, NOPs left out."""
    out = []
    for line in listing.splitlines():
        match = SASS_LINE.search(line)
        if match and match.group(3) != "NOP":
            out.append((int(match.group(1), 16), match.group(3), match.group(4).strip()))
    return out


def streaming_loops(instructions) -> List[Dict[str, object]]:
    """The outermost loops (a branch back to an earlier address closes one) with their
    instruction count and whether they read global memory (the loops that stream a row)."""
    spans = []
    for address, opcode, operands in instructions:
        if opcode.startswith("BRA"):
            target = re.match(r"(?:`\()?(0x[0-9a-f]+)", operands)
            if target and int(target.group(1), 16) < address:
                spans.append((int(target.group(1), 16), address))
    outer = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]
    loops = []
    for start, end in sorted(set(outer)):
        body = [opcode for address, opcode, _ in instructions if start <= address <= end]
        loops.append({"start": start, "end": end, "instructions": len(body),
                      "global_loads": sum(op.startswith("LDG") for op in body),
                      "mufu": sum(op.startswith("MUFU") for op in body)})
    return loops


def compile_report(spec: KernelSpec, arch: int, tools: Dict[str, Path]) -> CompileReport:
    ptx, shared = compile_ptx(spec, arch)
    with tempfile.TemporaryDirectory(prefix="labo-kernels-") as tmp:
        usage, sass = assemble(ptx, tools, Path(tmp))
    loops = streaming_loops(parse_sass(sass))
    per_thread = spec.block_v / (32 * spec.num_warps)
    streaming = [loop for loop in loops if loop["global_loads"] > 0]
    per_element = sum(loop["instructions"] for loop in streaming) / per_thread
    mufu = sum(loop["mufu"] for loop in streaming) / per_thread
    return CompileReport(
        name=spec.name, kernel=spec.kernel.__name__, dtype=spec.dtype, block_v=spec.block_v,
        num_warps=spec.num_warps, registers=usage["registers"],
        spill_bytes=usage["spill_stores"] + usage["spill_loads"], shared=shared,
        sass_per_element=round(per_element, 1), mufu_per_element=round(mufu, 2), loops=loops, info=spec.info)


# ---------------------------------------------------------------------------------------------
# Liger-Kernel's cross-entropy kernel, compiled as its launcher would launch it

LIGER_TYPES = {
    "X_ptr": "*{dt}", "X_stride": "i32", "Y_ptr": "*i64", "Y_stride": "constexpr", "weight_ptr": "*fp32",
    "loss_ptr": "*{dt}", "z_loss_ptr": "*{dt}", "loss_stride": "constexpr", "token_accuracy_ptr": "*fp32",
    "token_accuracy_stride": "constexpr", "predicted_tokens_ptr": "*i64", "predicted_tokens_stride": "constexpr",
    "n_cols": "i32", "n_non_ignore": "i32", "sum_non_ignore_weight": "i32", "weight_sum": "fp32",
    "ignore_index": "i32", "softcap": "constexpr",
}


def liger_specs(vocab: int, dtypes) -> Tuple[List[KernelSpec], Optional[str]]:
    """Liger's CE kernel (forward + in-place gradient, label smoothing on, mean reduction) per
    dtype; ([], reason) when liger-kernel is missing or its kernel's arguments are unknown."""
    from labo_fairseq.functional.triton_configs import KernelSpec

    try:
        import triton
        from liger_kernel.ops import cross_entropy as liger
    except Exception as exc:  # any import failure: the comparison row is skipped with the reason
        return [], f"liger-kernel does not import ({type(exc).__name__}: {exc})"
    kernel = liger.liger_cross_entropy_kernel
    constexpr_values = {"Y_stride": 1, "loss_stride": 1, "token_accuracy_stride": 0, "predicted_tokens_stride": 0,
                        "softcap": None, "lse_square_scale": 0.0, "label_smoothing": 0.1, "reduction": "mean",
                        "RETURN_Z_LOSS": False, "RETURN_TOKEN_ACCURACY": False, "RETURN_PREDICTED_TOKENS": False,
                        "HAS_WEIGHT": False, "HAS_SOFTCAPPING": False, "HAS_GRADIENTS": True}
    unknown = [n for n in kernel.arg_names if n not in LIGER_TYPES and n not in constexpr_values and n != "BLOCK_SIZE"]
    if unknown:
        return [], f"liger_cross_entropy_kernel has arguments this report does not know: {', '.join(unknown)}"
    block = min(liger.MAX_FUSED_SIZE, triton.next_power_of_2(vocab))
    specs = []
    for dt in dtypes:
        signature = {}
        constexprs = {"BLOCK_SIZE": block}
        for name, param in zip(kernel.arg_names, kernel.params):
            if param.is_constexpr or LIGER_TYPES.get(name) == "constexpr":
                signature[name] = "constexpr"
                constexprs.setdefault(name, constexpr_values.get(name))
            else:
                signature[name] = LIGER_TYPES[name].format(dt=dt)
        aligned = tuple(n for n in signature if signature[n].startswith("*") or n in ("X_stride", "n_cols"))
        # Liger's launcher: 32 warps on Hopper and earlier
        specs.append(KernelSpec(name="liger cross_entropy (fwd+grad)", kernel=kernel, dtype=dt, block_v=block,
                                num_warps=32, signature=signature, constexprs=constexprs, aligned=aligned,
                                info={"mode": "ls", "vocab": vocab}))
    return specs, None


# ---------------------------------------------------------------------------------------------

def _run_in_a_compiling_process(arch, vocab, dtypes, with_liger, modes) -> Dict[str, object]:
    """run() in a child without TRITON_INTERPRET: under the interpreter the kernels are
    Python functions, which Triton's compiler does not take."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="labo-kernels-") as tmp:
        out = Path(tmp) / "kernels.json"
        argv = [sys.executable, "-m", "labo_fairseq.benchmarks.kernels", "--arch", arch, "--vocab", str(vocab),
                "--dtypes", *dtypes, "--json", str(out), *([] if with_liger else ["--no-liger"]),
                *(["--modes", *modes] if modes else [])]
        child = subprocess.run(argv, env=env, capture_output=True, text=True)
        if child.returncode != 0:
            last = (child.stderr.strip().splitlines() or ["no output"])[-1]
            raise ToolchainError(f"the compiling process failed: {last}")
        return json.loads(out.read_text())


def run(arch: str, vocab: int, dtypes, with_liger: bool = True, log=None, modes=None) -> Dict[str, object]:
    """Compile every shipped configuration (only those of `modes`, when given) and, with
    `with_liger`, Liger's kernel; {arch, vocab, triton, rows, notes}."""

    tools = toolchain()
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _run_in_a_compiling_process(arch, vocab, dtypes, with_liger, modes)
    from labo_fairseq.functional.triton_configs import shipped_configs

    specs = [spec for spec in shipped_configs(vocab, dtypes) if modes is None or spec.info["mode"] in modes]
    notes = []
    if with_liger:
        liger, reason = liger_specs(vocab, dtypes)
        specs += liger
        if reason:
            notes.append(f"no Liger rows: {reason}")
    rows = []
    for spec in specs:
        report = compile_report(spec, ARCHES[arch], tools)
        rows.append(asdict(report))
        if log:
            log(f"# {spec.name} {spec.dtype}: {report.registers} registers, {report.spill_bytes} B spilled, "
                f"{report.sass_per_element} SASS/element")
    import triton
    return {"arch": arch, "vocab": vocab, "triton": triton.__version__, "rows": rows, "notes": notes}


def render(result) -> str:
    from tabulate import tabulate

    header = ["kernel", "mode", "dtype", "BLOCK_V", "warps", "registers", "spill B", "shared B", "SASS/elem",
              "MUFU/elem"]
    body = [[r["name"], r["info"].get("mode", ""), r["dtype"], r["block_v"], r["num_warps"], r["registers"],
             r["spill_bytes"], r["shared"], r["sass_per_element"], r["mufu_per_element"]] for r in result["rows"]]
    return tabulate(body, header, tablefmt="github")


def main(argv=None, prog="labo-bench kernels") -> int:
    from labo_fairseq.arguments import int_at_least, output_file
    from labo_fairseq.errors import UserError

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHES), default="sm_90", help="GPU architecture (default: sm_90)")
    p.add_argument("--vocab", type=int_at_least(2), default=32768,
                   help="vocabulary size that picks the block widths (default: 32768)")
    p.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16", "fp32"), default=["bf16", "fp16", "fp32"],
                   help="logits dtypes to compile for (default: all three)")
    p.add_argument("--no-liger", action="store_true", help="leave out the Liger-Kernel rows")
    p.add_argument("--modes", nargs="+", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", type=output_file, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    try:
        result = run(args.arch, args.vocab, args.dtypes, not args.no_liger,
                     log=lambda line: print(line, file=sys.stderr, flush=True), modes=args.modes)
    except ToolchainError as exc:
        raise UserError(f"cannot compile offline: {exc}") from None
    print(f"compiled for {args.arch} with triton {result['triton']} (ptxas/cuobjdump from its wheel), "
          f"V = {args.vocab}; compile-time figures, not GPU timings")
    for note in result["notes"]:
        print(note)
    print()
    print(render(result))
    if args.json:
        from labo_fairseq.textfiles import write_text_atomic
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
