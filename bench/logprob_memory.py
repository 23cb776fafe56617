"""Peak extra memory and time of the project's sampled-token logprob path against the naive one.

What it does: at vocabulary 151,936 (Qwen3) and B x T positions of logits, compares
``opd_megatron.objective.sampled_token_logprobs`` (chunked over T, fp32 only per chunk) with
naive ``torch.log_softmax(logits.float(), -1).gather(-1, ids)``, forward only (``--backward``:
forward + backward, the logits-sized gradient counted for both), and prints peak
extra memory, time, their ratios and the max abs difference of the two results. Both dtypes of
logits input are run: bf16 (what a GPU learner produces) and fp32 (where the difference target
of 1e-5 applies).

How memory is measured: torch's CPU allocator is invisible to tracemalloc, so each
measurement runs in a fresh subprocess that (1) builds the logits chunk by chunk (no temporary
larger than a chunk), (2) records its resident set size (VmRSS), (3) resets the kernel's
peak-RSS counter by writing 5 to /proc/self/clear_refs, (4) calls the variant once, (5) reads
the peak (VmHWM). Peak extra memory = VmHWM - VmRSS before the call: every byte the call
touched at its high-water mark, including allocator overheads. Time: the best of several
further calls in the same subprocess; variants alternate in rounds so that CPU contention from
other processes hits both alike.

Run (takes ~1-2 min at the default sizes; needs ~7 GB free RAM):
    flock /tmp/opd-heavy.lock .venv/bin/python bench/logprob_memory.py
    .venv/bin/python bench/logprob_memory.py --seq-tokens 1024 --rounds 1   # quick look
    flock /tmp/opd-heavy.lock .venv/bin/python bench/logprob_memory.py --backward --seq-tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VOCAB = 151_936
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_inputs(torch, batch: int, seq: int, dtype, seed: int, device: str = "cpu"):
    """Logits ~ 4 * N(0, 1) (a peaked, realistic scale), built 64 positions at a time."""
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.empty(batch, seq, VOCAB, dtype=dtype, device=device)
    for t0 in range(0, seq, 64):
        chunk = torch.randn(batch, min(64, seq - t0), VOCAB, generator=gen, device=device) * 4.0
        logits[:, t0:t0 + 64] = chunk.to(dtype)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=gen, device=device)
    return logits, ids


def run_variant(logits, ids, variant: str, *, backward: bool, chunk_size=None):
    """One call of ``variant`` (naive | chunked) on [B, T, V] logits -> [B, T] logprobs; with
    ``backward`` also the backward of their sum, the logits-sized gradient dropped afterwards
    (so a peak-memory reading around the call counts it, for both variants alike)."""
    import torch

    from opd_megatron.objective import sampled_token_logprobs

    def forward():
        if variant == "naive":
            return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1))[..., 0]
        return sampled_token_logprobs(logits, ids, chunk_size=chunk_size)

    if not backward:
        with torch.no_grad():
            return forward()
    out = forward()
    out.sum().backward()
    logits.grad = None
    return out.detach()


def _child(args) -> None:
    """One variant, one dtype: measure and write JSON + the result tensor to args.out."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    dtype = getattr(torch, DTYPES[args.dtype])
    logits, ids = _make_inputs(torch, args.batch, args.seq_tokens, dtype, args.seed)
    logits.requires_grad_(args.backward)

    def run():
        return run_variant(logits, ids, args.variant, backward=args.backward,
                           chunk_size=args.chunk_size or None)

    rss_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    out = run()
    peak_kib = _status_kib("VmHWM")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    torch.save(out, args.out + ".pt")
    with open(args.out, "w") as result:
        json.dump({"peak_extra_bytes": (peak_kib - rss_kib) * 1024, "time_s": min(times)}, result)


def _errors_vs_fp64(torch, args, dtype: str, naive_path: str, ours_path: str):
    """Max abs error of both results against float64 log_softmax, 64 positions at a time."""
    logits, ids = _make_inputs(torch, args.batch, args.seq_tokens,
                               getattr(torch, DTYPES[dtype]), args.seed)
    naive, ours = torch.load(naive_path), torch.load(ours_path)
    worst = [0.0, 0.0]
    for t0 in range(0, args.seq_tokens, 64):
        ref = torch.log_softmax(logits[:, t0:t0 + 64].double(), -1).gather(
            -1, ids[:, t0:t0 + 64].unsqueeze(-1))[..., 0]
        for slot, result in enumerate((naive, ours)):
            err = (result[:, t0:t0 + 64].double() - ref).abs().max().item()
            worst[slot] = max(worst[slot], err)
    del logits
    return worst


def _measure(args, variant: str, dtype: str, tmp: str, round_index: int):
    out = os.path.join(tmp, f"{variant}-{dtype}-{round_index}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--variant", variant,
           "--dtype", dtype, "--out", out, "--batch", str(args.batch),
           "--seq-tokens", str(args.seq_tokens), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.backward:
        cmd.append("--backward")
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    subprocess.run(cmd, check=True)
    with open(out) as result:
        return json.load(result), out + ".pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-tokens", type=int, default=4096)
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per subprocess")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=0, help="positions per chunk; 0: auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backward", action="store_true",
                        help="measure forward + backward of sum(logprobs) instead of forward")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=("naive", "chunked"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=tuple(DTYPES), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    import torch

    gib = 1 << 30
    mode = "forward + backward" if args.backward else "forward only"
    print(f"logits [B={args.batch}, T={args.seq_tokens}, V={VOCAB}], {mode}, "
          f"{args.threads} threads, best of {args.rounds} rounds x {args.repeats} calls")
    print(f"{'dtype':5} {'naive peak':>11} {'ours peak':>10} {'mem ratio':>9} "
          f"{'naive s':>8} {'ours s':>7} {'time ratio':>10} {'max abs diff':>12} "
          f"{'naive err':>10} {'ours err':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            best = {}
            for round_index in range(args.rounds):
                for variant in ("naive", "chunked"):
                    result, tensor_path = _measure(args, variant, dtype, tmp, round_index)
                    old = best.get(variant)
                    best[variant] = {
                        "peak": min(result["peak_extra_bytes"], old["peak"]) if old
                        else result["peak_extra_bytes"],
                        "time": min(result["time_s"], old["time"]) if old else result["time_s"],
                        "tensor": tensor_path}
            diff = (torch.load(best["naive"]["tensor"]) - torch.load(best["chunked"]["tensor"])
                    ).abs().max().item()
            naive, ours = best["naive"], best["chunked"]
            errors = _errors_vs_fp64(torch, args, dtype, naive["tensor"], ours["tensor"])
            print(f"{dtype:5} {naive['peak'] / gib:9.3f}Gi {ours['peak'] / gib:8.3f}Gi "
                  f"{naive['peak'] / max(ours['peak'], 1):8.1f}x {naive['time']:8.3f} "
                  f"{ours['time']:7.3f} {ours['time'] / naive['time']:9.2f}x {diff:12.2e} "
                  f"{errors[0]:10.2e} {errors[1]:9.2e}")
    print("targets: mem ratio >= 8x, time ratio <= 1.2x, max abs diff <= 1e-5 (fp32)")
    print("err: max abs error of each path against a float64 log_softmax of the same logits")


if __name__ == "__main__":
    main()
