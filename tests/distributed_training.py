"""Run a training script under `accelerate launch` / `torchrun` and write what every process holds at the end.

    accelerate launch tests/distributed_training.py scripts/train_dalle.py --output_dir OUT ...

After training, each process saves its own copy of the weights (and of the EMA weights, with --use_ema) to
`OUT/rank-{rank}.safetensors`, so a test can check that data-parallel replicas stayed identical.
"""

import importlib.util
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file


def main():
    script_path, argv = sys.argv[1], sys.argv[2:]
    spec = importlib.util.spec_from_file_location("training_script", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    train = script.train

    def train_and_dump(args, accelerator, model, dataloader, loss_fn, ema=None, **kwargs):
        unwrapped, state, metrics = train(args, accelerator, model, dataloader, loss_fn, ema=ema, **kwargs)
        tensors = {f"model.{n}": p.detach().contiguous() for n, p in unwrapped.named_parameters()}
        if ema is not None:
            names = [n for n, _ in unwrapped.named_parameters()]
            tensors |= {f"ema.{n}": p.detach().contiguous() for n, p in zip(names, ema.shadow_params)}
        output_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(output_dir / f"rank-{PartialState().process_index}.safetensors"))
        return unwrapped, state, metrics

    script.train = train_and_dump
    script.main(argv)


if __name__ == "__main__":
    main()
