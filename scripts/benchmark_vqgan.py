"""VQGAN encode and decode speed against the original taming-transformers code, in one process.

The Sber VQGAN of ruDALL-E (taming's Encoder/Decoder: ch 128, ch_mult 1-1-2-4, 2 res blocks, 8192 codes of 256,
attention at the lowest resolution), with random weights, at `--image-size` (default 128: a 16x16 grid; the released
model works at 256). Ours: `DalleVQGAN.encode(pixels).indices` and `.decode(codes).sample`. The reference: taming's
modules as ruDALL-E's `GumbelVQ` runs them (encoder, `quant_conv`, argmax of `quantize.proj`; decode: code vectors,
`post_quant_conv`, decoder), with an embedding lookup where ruDALL-E multiplies one-hot vectors by the codebook (so
the reference is the faster of the two). The same weights are converted into ours, and the codes are checked to be
equal before timing.

Timings are interleaved medians (see `_benchmark_utils.py`); ratios compare workloads of the same run. Results go to
`<output>.md` and `<output>.json`.

    .venv-ref/bin/python scripts/benchmark_vqgan.py
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_dalle import DalleVQGAN, DalleVQGANConfig
from hf_dalle.conversion.convert_rudalle_vqgan import taming_to_dalle_vqgan_state_dict


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_utils import (  # noqa: E402
    environment,
    format_ratio,
    format_seconds,
    interleaved_timings,
    markdown_table,
    summarize,
    write_results,
)


OURS, TAMING = "ours: DalleVQGAN", "taming-transformers"
TARGET = 1.0


class TamingGumbelVQGAN(torch.nn.Module):
    """taming's Encoder / Decoder and ruDALL-E's GumbelVQ convolutions, under the checkpoint's names."""

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder

        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.quantize = torch.nn.Module()
        self.quantize.proj = torch.nn.Conv2d(embed_dim, n_embed, 1)
        self.quantize.embed = torch.nn.Embedding(n_embed, embed_dim)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.quantize.proj(self.quant_conv(self.encoder(2 * pixels - 1))).argmax(1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        z = F.embedding(codes, self.quantize.embed.weight).permute(0, 3, 1, 2)
        return (self.decoder(self.post_quant_conv(z)).clamp(-1, 1) + 1) / 2


def sber_ddconfig(image_size: int, width: int) -> dict:
    return {
        "double_z": False,
        "z_channels": 256,
        "resolution": image_size,
        "in_channels": 3,
        "out_ch": 3,
        "ch": width,
        "ch_mult": [1, 1, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [image_size // 8],
        "dropout": 0.0,
    }


def workloads_of(args) -> tuple[dict, dict]:
    ddconfig = sber_ddconfig(args.image_size, args.width)
    config = DalleVQGANConfig(
        vocab_size=args.vocab_size,
        embed_dim=256,
        latent_channels=256,
        block_out_channels=[args.width * m for m in ddconfig["ch_mult"]],
        layers_per_block=2,
        attention_resolutions=ddconfig["attn_resolutions"],
        image_size=args.image_size,
    )
    torch.manual_seed(0)
    ours = DalleVQGAN(config).eval()
    pixels = torch.rand(
        args.batch_size, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1)
    )
    codes = torch.randint(0, args.vocab_size, (args.batch_size, config.latent_size, config.latent_size))
    encode = {OURS: lambda: ours.encode(pixels).indices.shape[0]}
    decode = {OURS: lambda: ours.decode(codes).sample.shape[0]}
    if args.reference:
        taming = TamingGumbelVQGAN(ddconfig, args.vocab_size, 256).eval()
        ours.load_state_dict(taming_to_dalle_vqgan_state_dict(taming.state_dict(), ours))
        if not torch.equal(ours.encode(pixels).indices, taming.encode(pixels)):
            raise RuntimeError(
                "The converted VQGAN encodes to other codes than taming's: the timings would not compare."
            )
        torch.testing.assert_close(ours.decode(codes).sample, taming.decode(codes), atol=1e-4, rtol=0)
        encode[TAMING] = lambda: taming.encode(pixels).shape[0]
        decode[TAMING] = lambda: taming.decode(codes).shape[0]
    return encode, decode


def measure(workloads: dict, args) -> dict:
    samples = interleaved_timings(workloads, args.repeats, torch.device("cpu"), measure_memory=args.memory)
    results = {name: summarize(samples[name]) for name in workloads}
    basis = "cpu_s" if torch.get_num_threads() == 1 else "wall_s"
    ratio = results[TAMING][basis] / results[OURS][basis] if TAMING in results else None
    for name, result in results.items():
        print(f"  {name:25s} wall {result['wall_s']:8.3f} s  CPU {result['cpu_s']:8.3f} s", flush=True)
    return {"results": results, "ratio_basis": basis, "ratio": ratio}


def vqgan_markdown(runs: dict, info: dict, args) -> str:
    basis_name = "CPU time (one thread)" if runs["encode"]["ratio_basis"] == "cpu_s" else "wall time"
    rows = []
    for step, run in runs.items():
        for index, (name, result) in enumerate(run["results"].items()):
            memory = result.get("peak_memory_mib")
            rows.append(
                [
                    step,
                    name,
                    format_seconds(result["wall_s"]),
                    format_seconds(result["cpu_s"]),
                    f"{result['items_per_cpu_s']:.2f}",
                    "" if memory is None else f"{memory:.1f}",
                    format_ratio(run["ratio"]) if index == 0 else "",
                ]
            )
    lines = [
        "## VQGAN encode / decode",
        "",
        f"{info['device']} ({info.get('cpu')}), torch {info['torch']}, fp32, {info['torch_threads']} thread(s), "
        f"{info['date_utc']} UTC. The Sber VQGAN architecture (ch {args.width}, ch_mult 1-1-2-4, 2 res blocks, "
        f"{args.vocab_size} codes), {args.batch_size} images of {args.image_size}x{args.image_size} "
        f"({args.image_size // 8}x{args.image_size // 8} codes), random weights converted from taming's. Medians of "
        f"{args.repeats} interleaved repeats. Ratio: taming's {basis_name} over ours.",
        "",
        markdown_table(["step", "implementation", "wall s", "CPU s", "images/CPU-s", "peak mem MiB", "ratio"], rows),
    ]
    if runs["encode"]["ratio"] is not None:
        lines += ["", "Targets (same run):", ""]
        for step, run in runs.items():
            met = "met" if run["ratio"] >= TARGET else "NOT met"
            lines.append(f"- {step}: {run['ratio']:.2f}x taming-transformers (target >= {TARGET}): {met}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps shared-CPU runs steady)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=128, help="taming's `ch` (Sber: 128)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="do not measure peak memory")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="skip taming (also when not installed)"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks") / "vqgan_cpu", help="results stem")
    args = parser.parse_args(argv)
    if args.image_size % 8 or min(args.batch_size, args.repeats, args.width) < 1:
        raise ValueError("--image-size must be a multiple of 8; batch size, repeats and width positive.")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.reference and importlib.util.find_spec("taming") is None:
        print("taming-transformers not installed (make ref-env): skipping the reference.", file=sys.stderr)
        args.reference = False
    info = environment(torch.device("cpu"), torch.get_num_threads())
    with torch.no_grad():
        encode, decode = workloads_of(args)
        runs = {"encode": measure(encode, args), "decode": measure(decode, args)}
    data = {"environment": info, "arguments": {k: str(v) for k, v in vars(args).items()}, **runs}
    write_results(args.output, vqgan_markdown(runs, info, args), data)
    print(f"wrote {args.output}.md and {args.output}.json")


if __name__ == "__main__":
    main()
