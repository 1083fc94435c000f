"""An ordinary training script that knows nothing about stabkit — watch it without editing it:

    stabkit watch --log runs/watch -- python examples/monitor_training.py --steps 20
    stabkit monitor report runs/watch        # runs/watch/report.md + one PNG per call site

A tiny second-order (covariance) classifier on synthetic data: each step computes the channel
covariance of a batch of features, takes its matrix logarithm through ``torch.linalg.eigh``
(imported with ``from torch.linalg import eigh``, which ``stabkit watch`` still catches) and
trains a linear head. Runs on a CPU in about a second. ``--sleep`` slows each step (to try
killing it mid-run: the log keeps every finished step). ``--collapse STEP`` zeroes a feature
channel from that step on, so the covariance's smallest eigenvalue is the ridge ``--eps``; with
``--eps 0`` it is 0 (or a rounding error either side of it) and log λ turns the loss non-finite:
the kind of event the report is for.
"""

import argparse
import time

import torch
from torch import nn
from torch.linalg import eigh


class LogCovNet(nn.Module):
    def __init__(self, features=8, channels=6, classes=3, eps=1e-3):
        super().__init__()
        self.proj = nn.Linear(features, channels)
        self.head = nn.Linear(channels * channels, classes)
        self.eps = eps

    def forward(self, x, collapse=False):  # x: (B, T, features) — T samples per item
        h = self.proj(x)
        if collapse:
            h = torch.cat([torch.zeros_like(h[..., :1]), h[..., 1:]], dim=-1)  # a dead channel: a zero eigenvalue
        h = h - h.mean(1, keepdim=True)
        cov = h.transpose(1, 2) @ h / h.shape[1] + self.eps * torch.eye(h.shape[-1])
        lam, U = eigh(cov)
        log_cov = (U * torch.log(lam)[:, None, :]) @ U.transpose(1, 2)
        return self.head(log_cov.flatten(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each step")
    parser.add_argument("--collapse", type=int, default=-1, help="step from which two channels are equal (-1: never)")
    parser.add_argument("--eps", type=float, default=1e-3, help="ridge added to the covariance")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LogCovNet(eps=args.eps)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 16, 8)
    y = torch.randint(0, 3, (64,))
    for step in range(args.steps):
        loss = nn.functional.cross_entropy(model(x, collapse=0 <= args.collapse <= step), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.4f}", flush=True)
        if args.sleep:
            time.sleep(args.sleep)


if __name__ == "__main__":
    main()
