"""How far Adam moves a task's new outputs in their first steps: in one output layer shared by every task (van de
Ven & Tolias's 10-unit layer, cilearn's ``head: full``) against a head of their own (a fresh Adam state, cilearn's
head per task in Task-IL).

Adam keeps one step count per tensor. The rows of a later task's outputs get zero gradients while earlier tasks
train, so their moments stay zero while the layer's step count grows; when their task starts, the bias correction
(set by that large step count) no longer makes up for the zero-initialised second moment, and the first steps are
several times lr. A fresh state steps by about lr. Prints the step of the new row in units of lr.

    python benchmarks/adam_new_outputs.py --steps-before 2000 --lr 0.001
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-before", type=int, default=2000, help="steps of the earlier task (theirs: 2000)")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--gradient", type=float, default=0.5, help="the new row's (constant) gradient")
    args = parser.parse_args()
    torch.manual_seed(0)
    shared = torch.zeros(2, 1, requires_grad=True)  # row 0: an earlier task's output, row 1: the new task's
    shared_adam = torch.optim.Adam([shared], lr=args.lr)
    for _ in range(args.steps_before):
        shared.grad = torch.cat([torch.randn(1, 1), torch.zeros(1, 1)])
        shared_adam.step()
    own = torch.zeros(1, 1, requires_grad=True)
    own_adam = torch.optim.Adam([own], lr=args.lr)
    g = torch.full((1, 1), args.gradient)
    print("step of the new task | shared layer (x lr) | own head, fresh Adam (x lr)")
    for step in range(1, 1001):
        before_shared, before_own = shared[1].item(), own.item()
        shared.grad = torch.cat([torch.zeros(1, 1), g])
        shared_adam.step()
        own.grad = g.clone()
        own_adam.step()
        if step in (1, 10, 100, 300, 1000):
            print(f"{step:>20} | {(before_shared - shared[1].item()) / args.lr:19.2f} | "
                  f"{(before_own - own.item()) / args.lr:.2f}")


if __name__ == "__main__":
    main()
