#!/usr/bin/env python3
"""Static checks of the compiled CUDA kernels (no GPU needed): what ptxas made of them.

The quantize kernel's speed rests on three properties of its machine code, which a harmless-
looking change to the shared numerics can silently lose (docs/cuda.md, "Machine code"):
  - at most 128 registers per thread, so two CTAs of 256 threads (16 warps) fit on an SM
    (every architecture; the rest is checked on sm_90, see CHECKED_ARCH);
  - no stack frame in the unweighted variants (the weight-quantisation path): a block's 16
    values, and the threshold row the rounding selects from, live in registers, not local
    memory (a run-time array index, e.g. a loop bounded by n, puts them on the stack);
  - a short candidate loop: one candidate of the sweep (16 roundings by threshold binary search,
    one fmaf each) is at most MAX_CANDIDATE_LOOP SASS instructions (238 for MSE, 255 for WMSE
    when this test was written; the seven-comparison count with an integer index made 523).

Usage: kernel_resources_test.py LIBRARY (libnvfp4_cuda.a). cuobjdump and nvdisasm come from the
test venv (PyPI nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm), else PATH, else /usr/local/cuda.
Exit status 0: every check passed, or the tools are missing (printed as SKIPPED).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig

# The stack and loop limits are calibrated on sm_90 (CI's architecture and the H100/H200 the
# benchmark targets); other architectures in a release build are reported, not checked (nvcc
# spills more there: 112-128 bytes in the weighted variants on sm_100/sm_120 with CUDA 13.0).
CHECKED_ARCH = 'sm_90'
MAX_REGISTERS = 128
MAX_WEIGHTED_STACK = 64  # bytes: the weighted variants spill a few values outside the loops
MAX_CANDIDATE_LOOP = 280  # SASS instructions per candidate
KERNEL = re.compile(r'QuantizeKernelILNS_5DTypeE(\d)ELb([01])ELb([01])E')
DTYPES = {'0': 'f32', '1': 'bf16', '2': 'f16'}


def find_tool(name):
    """The tool from the venv's nvidia wheels, else PATH, else the toolkit; None if absent."""
    purelib = sysconfig.get_paths()['purelib']
    for sub in ('cu13', 'cu12', 'cuda_cuobjdump', 'cuda_nvdisasm'):
        path = os.path.join(purelib, 'nvidia', sub, 'bin', name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name) or next(
        (p for p in ['/usr/local/cuda/bin/' + name] if os.access(p, os.X_OK)), None)


def variant_name(function):
    m = KERNEL.search(function)
    if not m:
        return None
    dtype, weights, search_weighted = m.groups()
    kind = 'wmse' if search_weighted == '1' else ('weighted' if weights == '1' else 'plain')
    return f'{DTYPES[dtype]}/{kind}', weights == '1'


def dump_lines(cuobjdump, what, library):
    """The lines of `cuobjdump what library` (what: -res-usage or -sass)."""
    return subprocess.run([cuobjdump, what, library], check=True, capture_output=True,
                          text=True).stdout.splitlines()


def check_resources(cuobjdump, library, failures):
    arch, function, seen, archs = None, None, 0, set()
    for line in dump_lines(cuobjdump, '-res-usage', library):
        m = re.match(r'arch = (sm_\d+)', line)
        if m:
            arch = m.group(1)
            archs.add(arch)
        m = re.match(r'\s*Function (\S+?):?$', line)
        if m:
            function = m.group(1)
            continue
        m = re.search(r'REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)', line)
        if not (m and function):
            continue
        regs, stack, _, local = map(int, m.groups())
        name = variant_name(function)
        if name is None:
            if 'ScanKernel' in function and stack:
                failures.append(f'{arch} scan kernel uses a {stack}-byte stack')
            continue
        seen += 1
        label, weighted = name
        print(f'{arch} quantize {label:14s} registers {regs:3d}  stack {stack:3d} B  local {local}')
        if regs > MAX_REGISTERS:
            failures.append(f'{arch} {label}: {regs} registers > {MAX_REGISTERS} '
                            '(fewer than two 256-thread CTAs per SM)')
        if local and arch == CHECKED_ARCH:
            failures.append(f'{arch} {label}: {local} bytes of local memory')
        limit = MAX_WEIGHTED_STACK if weighted else 0
        if stack > limit and arch == CHECKED_ARCH:
            failures.append(f'{arch} {label}: {stack}-byte stack frame (at most {limit})')
    if seen == 0:
        failures.append('no QuantizeKernel found in ' + library)
    if CHECKED_ARCH not in archs:
        print(f'SKIPPED the stack and candidate-loop checks: no {CHECKED_ARCH} code in {library} '
              '(the limits are calibrated there)')


def sass_functions(lines):
    """{(arch, function): [(pc, instruction text)]} from `cuobjdump -sass` output lines."""
    kernels, function, arch = {}, None, None
    for line in lines:
        m = re.search(r'code for (sm_\d+)', line)
        if m:
            arch = m.group(1)
        m = re.search(r'Function : (\S+)', line)
        if m:
            function = (arch, m.group(1))
            kernels[function] = []
            continue
        m = re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;', line)
        if m and function:
            kernels[function].append((int(m.group(1), 16), m.group(2)))
    return kernels


def loop_bodies(instructions):
    """[(begin, end, body, innermost, FFMA count)] for every backward branch (a loop)."""
    loops = []
    for pc, text in instructions:
        m = re.search(r'\bBRA (?:!?U?P\d, )?(?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)', text)
        if m and int(m.group(1), 16) < pc:
            loops.append((int(m.group(1), 16), pc))
    result = []
    for begin, end in loops:
        innermost = not any(begin <= b and e <= end and (b, e) != (begin, end) for b, e in loops)
        body = [t for pc, t in instructions if begin <= pc <= end]
        ffma = sum(1 for t in body if re.match(r'(@!?U?P\w+\s+)?FFMA\b', t))
        result.append((begin, end, body, innermost, ffma))
    return result


def candidate_loops(instructions):
    """Sizes of the innermost loops holding exactly 16 FFMA: one sweep candidate each (the
    numerics' only fmaf per element is the loss's; --fmad=false adds none)."""
    return [len(body) for _, _, body, innermost, ffma in loop_bodies(instructions)
            if innermost and ffma == 16]


def check_candidate_loops(cuobjdump, library, failures):
    kernels = sass_functions(dump_lines(cuobjdump, '-sass', library))
    for (arch, function), instructions in sorted(kernels.items()):
        name = variant_name(function)
        if name is None:
            continue
        sizes = candidate_loops(instructions)
        print(f'{arch} quantize {name[0]:14s} candidate loops (SASS instructions): {sizes}')
        if arch != CHECKED_ARCH:
            continue
        if not sizes:
            failures.append(f'{arch} {name[0]}: no candidate loop found')
        elif max(sizes) > MAX_CANDIDATE_LOOP:
            failures.append(f'{arch} {name[0]}: candidate loop of {max(sizes)} instructions '
                            f'(at most {MAX_CANDIDATE_LOOP})')


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: kernel_resources_test.py libnvfp4_cuda.a')
    library = sys.argv[1]
    cuobjdump = find_tool('cuobjdump')
    if cuobjdump is None:
        print('SKIPPED: cuobjdump not found (scripts/deps.sh installs it into .venv)')
        return 0
    failures = []
    check_resources(cuobjdump, library, failures)
    nvdisasm = find_tool('nvdisasm')
    if nvdisasm is None:
        print('SKIPPED the candidate-loop check: nvdisasm not found')
    else:
        os.environ['NVDISASM_PATH'] = os.path.dirname(nvdisasm)
        os.environ['PATH'] = os.path.dirname(nvdisasm) + os.pathsep + os.environ.get('PATH', '')
        check_candidate_loops(cuobjdump, library, failures)
    for failure in failures:
        print('FAILED:', failure)
    print('PASSED' if not failures else f'{len(failures)} check(s) failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
