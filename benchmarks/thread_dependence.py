"""Does one ResNet-32 training step give the same numbers on 1 and 2 CPU threads? (README, precision.)

One forward (training mode) and backward of a batch of 128 random images, fp32, per memory layout and thread
count, then an evaluation-mode forward: prints whether the outputs and gradients are equal to the bit.
    python benchmarks/thread_dependence.py
"""

from __future__ import annotations

import torch

from cilearn.models import build_model


def step(threads: int, layout: torch.memory_format) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("resnet32", 3, 32, shortcut="A", last_relu=False)
    model.add_classes(10)
    model = model.to(memory_format=layout)
    images = torch.randn(128, 3, 32, 32).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (128,))
    logits = model(images)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    with torch.no_grad():
        evaluated = model.eval()(images)
    return logits.detach(), [p.grad for p in model.parameters()], evaluated


def main() -> None:
    for name, layout in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        (out1, grads1, eval1), (out2, grads2, eval2) = step(1, layout), step(2, layout)
        differing = [(a - b).abs().max().item() for a, b in zip(grads1, grads2) if not torch.equal(a, b)]
        print(f"{name}: training forward equal {torch.equal(out1, out2)} (max |Δ| {(out1 - out2).abs().max():.2g}), "
              f"gradients differing {len(differing)}/{len(grads1)} (max |Δ| {max(differing, default=0):.2g}), "
              f"evaluation forward equal {torch.equal(eval1, eval2)}")


if __name__ == "__main__":
    main()
