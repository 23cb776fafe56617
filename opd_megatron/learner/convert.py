"""HF <-> Megatron-Core checkpoint conversion for Qwen3 (``opd convert``).

    opd convert hf-to-mcore HF_DIR MCORE_DIR [--tp N] [--pp N] [--spec local|te]
    opd convert mcore-to-hf MCORE_DIR HF_DIR
    opd convert --verify HF_DIR [--tol 1e-5] [--seq-len 32]

Also ``python -m opd_megatron.learner.convert ...``. A Megatron directory holds one
``mp_rank_TT_PPP/model.pt`` per (tp, pp) shard (Megatron names, loadable with
``torch.load(weights_only=True)``), ``mcore_meta.json`` (layout, spec, HF config) and the HF
side files (tokenizer, generation config) under ``hf_side/`` so the way back is lossless.
Conversion is pure tensor mapping (opd_megatron.learner.mapping): no process group needed.

``--verify`` loads the HF model in transformers (fp32, eager attention) and the converted
Megatron model (TP=1, local spec on CPU), runs both on the same random tokens, prints the max
abs logit difference and whether HF -> Megatron -> HF is bit-exact, and exits 1 when the
difference exceeds ``--tol`` or the round trip is not exact.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from opd_megatron.learner import cpu_compat
from opd_megatron.errors import ConfigError
from opd_megatron.learner.hf_io import commit_dir, load_hf_weights, save_hf_dir, temp_sibling
from opd_megatron.learner.mapping import hf_to_mcore_shard, mcore_shards_to_hf
from opd_megatron.learner.qwen3 import Qwen3Arch, check_parallel_fits, read_hf_config

META = "mcore_meta.json"
FORMAT = "opd-megatron-mcore-v1"


def _shard_path(root: Path, tp_rank: int, pp_rank: int) -> Path:
    return root / f"mp_rank_{tp_rank:02d}_{pp_rank:03d}" / "model.pt"


def hf_to_mcore(src: str | Path, dst: str | Path, *, tp: int = 1, pp: int = 1,
                spec: str = "local") -> Path:
    """Write the Megatron shards of an HF Qwen3 directory (atomically)."""
    src, final = Path(src), Path(dst)
    hf_config = read_hf_config(src)
    arch = Qwen3Arch.from_hf(hf_config, str(src / "config.json"))
    if spec not in ("local", "te"):
        raise ConfigError(f"--spec {spec!r}: use local or te")
    if tp < 1 or pp < 1:
        raise ConfigError(f"--tp {tp} --pp {pp}: both must be >= 1")
    check_parallel_fits(arch, tp, pp, source=str(src))
    weights = load_hf_weights(src)
    tmp = temp_sibling(final)
    try:
        for pp_rank in range(pp):
            for tp_rank in range(tp):
                shard = hf_to_mcore_shard(weights, arch, tp=tp, tp_rank=tp_rank, pp=pp,
                                          pp_rank=pp_rank, te=spec == "te")
                path = _shard_path(tmp, tp_rank, pp_rank)
                path.parent.mkdir(parents=True)
                torch.save({"model": shard}, path)
        side = tmp / "hf_side"
        side.mkdir()
        for path in sorted(src.iterdir()):
            if path.is_file() and not path.name.endswith((".safetensors", ".bin")) \
                    and path.name != "model.safetensors.index.json":
                shutil.copy2(path, side / path.name)
        meta = {"format": FORMAT, "tp": tp, "pp": pp, "spec": spec, "hf_config": hf_config}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_mcore(src: str | Path) -> tuple[dict, Dict[str, torch.Tensor]]:
    """(meta, full HF state dict) of a Megatron directory written by ``hf_to_mcore``."""
    root = Path(src)
    meta_path = root / META
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: not found; MCORE_DIR must come from hf-to-mcore")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    arch = Qwen3Arch.from_hf(meta["hf_config"], str(meta_path))
    shards = {}
    for pp_rank in range(meta["pp"]):
        for tp_rank in range(meta["tp"]):
            path = _shard_path(root, tp_rank, pp_rank)
            if not path.is_file():
                raise ConfigError(f"{path}: missing shard")
            shards[(tp_rank, pp_rank)] = torch.load(path, map_location="cpu",
                                                    weights_only=True)["model"]
    return meta, mcore_shards_to_hf(shards, arch, tp=meta["tp"], pp=meta["pp"],
                                    te=meta["spec"] == "te")


def mcore_to_hf(src: str | Path, dst: str | Path) -> Path:
    """Write an HF directory (config, model.safetensors, tokenizer) from Megatron shards."""
    meta, weights = read_mcore(src)
    return save_hf_dir(dst, weights, meta["hf_config"], source_dirs=[Path(src) / "hf_side"])


@cpu_compat.scoped
def verify(hf_dir: str | Path, *, seq_len: int = 32, seed: int = 0) -> Dict[str, float]:
    """Max abs logit diff HF vs converted Megatron (fp32) and round-trip exactness."""
    from transformers import AutoModelForCausalLM

    from opd_megatron.config.schema import ParallelConfig
    from opd_megatron.learner.forward import causal_inputs
    from opd_megatron.learner.parallel import init_parallel
    from opd_megatron.learner.qwen3 import build_gpt_model
    from opd_megatron.learner.weights import load_hf_into

    root = Path(hf_dir)
    arch = Qwen3Arch.from_hf(read_hf_config(root), str(root / "config.json"))
    weights = {k: v.float() for k, v in load_hf_weights(root).items()}
    back = mcore_shards_to_hf({(0, 0): hf_to_mcore_shard(weights, arch, tp=1, tp_rank=0, pp=1,
                                                          pp_rank=0, te=False)}, arch,
                              tp=1, pp=1, te=False)
    round_trip = set(back) == set(weights) and all(torch.equal(back[k], weights[k]) for k in back)
    ranks = init_parallel(ParallelConfig(tp=1, pp=1, dp=1), seed)
    model = build_gpt_model(arch, tp=1, pp=1, dtype=torch.float32, use_te=False)
    load_hf_into(model, weights, arch, ranks)
    hf_model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, arch.vocab_size, (2, min(seq_len, arch.max_position_embeddings)),
                           generator=gen)
    with torch.no_grad():
        ours = model.eval()(tokens, *causal_inputs(tokens))[..., : arch.vocab_size]
        theirs = hf_model(tokens).logits
    return {"max_abs_logit_diff": float((ours - theirs).abs().max()),
            "round_trip_exact": float(round_trip)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opd convert", description=__doc__.split("\n")[0])
    p.add_argument("--verify", metavar="HF_DIR", help="check an HF Qwen3 dir converts exactly")
    p.add_argument("--tol", type=float, default=1e-5, help="--verify: max abs logit diff allowed")
    p.add_argument("--seq-len", type=int, default=32, help="--verify: random sequence length")
    p.add_argument("direction", nargs="?", choices=["hf-to-mcore", "mcore-to-hf"])
    p.add_argument("src", nargs="?")
    p.add_argument("dst", nargs="?")
    p.add_argument("--tp", type=int, default=1, help="hf-to-mcore: tensor-parallel shards")
    p.add_argument("--pp", type=int, default=1, help="hf-to-mcore: pipeline stages")
    p.add_argument("--spec", default="local", help="hf-to-mcore: layer spec, local | te")
    return p


def cli_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``opd convert``; ConfigError for bad input (the CLI exits 2)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.verify:
        result = verify(args.verify, seq_len=args.seq_len)
        ok = result["max_abs_logit_diff"] <= args.tol and result["round_trip_exact"] == 1.0
        print(f"max_abs_logit_diff={result['max_abs_logit_diff']:.3e} (tol {args.tol:.1e}) "
              f"round_trip_exact={bool(result['round_trip_exact'])} -> {'OK' if ok else 'FAIL'}")
        return 0 if ok else 1
    if not (args.direction and args.src and args.dst):
        raise ConfigError("opd convert: give hf-to-mcore SRC DST, mcore-to-hf SRC DST or "
                          "--verify HF_DIR")
    if args.direction == "hf-to-mcore":
        out = hf_to_mcore(args.src, args.dst, tp=args.tp, pp=args.pp, spec=args.spec)
    else:
        out = mcore_to_hf(args.src, args.dst)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(cli_main())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
