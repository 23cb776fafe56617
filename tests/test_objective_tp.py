"""Vocab-parallel (TP=2, gloo, two real processes on 127.0.0.1) equals single process:
sampled-token logprobs, their gradients, and the top-k divergence with its tail."""

from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from opd_megatron.objective import sampled_token_logprobs, topk_divergence

WORLD = 2
VOCAB = 12


def _inputs():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 7, VOCAB, generator=gen, dtype=torch.float64) * 3
    tokens = torch.randint(0, VOCAB, (2, 7), generator=gen)
    teacher = torch.log_softmax(torch.randn(2, 7, VOCAB, generator=gen, dtype=torch.float64), -1)
    weights = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 7, generator=gen) < 0.8).double()
    return logits, tokens, teacher, weights, mask


def _objectives(logits, tokens, teacher, weights, mask, tp_group):
    """(logprob objective, [top-k divergence with tail, K = V divergence]) on one layout."""
    logprobs = sampled_token_logprobs(logits, tokens, temperature=0.9, chunk_size=3,
                                      tp_group=tp_group)
    topk_lp, topk_ids = teacher.topk(4, dim=-1)
    with_tail, _ = topk_divergence(logits, topk_ids, topk_lp, mask, kind="jsd", beta=0.3,
                                   chunk_size=2, tp_group=tp_group)
    all_lp, all_ids = teacher.topk(VOCAB, dim=-1)
    exact, _ = topk_divergence(logits, all_ids, all_lp, mask, kind="reverse_kl",
                               tp_group=tp_group)
    return logprobs, [(logprobs * weights).sum(), with_tail, exact]


def _worker(rank: int, port: int, error_dir: str) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=WORLD)
        group = dist.new_group(list(range(WORLD)))
        logits, tokens, teacher, weights, mask = _inputs()
        shard_vocab = VOCAB // WORLD
        shard_slice = slice(rank * shard_vocab, (rank + 1) * shard_vocab)
        for index in range(3):
            full = logits.clone().requires_grad_()
            ref_lp, ref_terms = _objectives(full, tokens, teacher, weights, mask, None)
            ref_terms[index].backward()
            shard = logits[..., shard_slice].clone().requires_grad_()
            tp_lp, tp_terms = _objectives(shard, tokens, teacher, weights, mask, group)
            tp_terms[index].backward()
            torch.testing.assert_close(tp_lp, ref_lp, rtol=0, atol=1e-12)
            torch.testing.assert_close(tp_terms[index], ref_terms[index], rtol=0, atol=1e-12)
            torch.testing.assert_close(shard.grad, full.grad[..., shard_slice], rtol=0, atol=1e-12)
            assert float(full.grad.abs().sum()) > 0
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(error_dir, f"rank{rank}.txt"), "w") as out:
            out.write(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_vocab_parallel_equals_single_process(tmp_path):
    try:
        mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                           start_method="spawn")
    except Exception as exc:
        reports = "\n".join(p.read_text() for p in sorted(tmp_path.glob("rank*.txt")))
        raise AssertionError(f"a TP rank failed:\n{reports}") from exc
