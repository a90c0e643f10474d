"""Learn to down-weight noisy labels: a two-level graph in about 25 lines (README example)."""

import functools

import torch
from torch import nn

from engines import DataStream, Graph, Level

torch.manual_seed(0)
x, x_val = torch.randn(512, 2), torch.randn(256, 2)
y, y_val = (x[:, 0] * x[:, 1] > 0).long(), (x_val[:, 0] * x_val[:, 1] > 0).long()
flipped = torch.rand(512) < 0.3  # 30 % of the training labels are wrong
train = torch.utils.data.TensorDataset(x, torch.where(flipped, 1 - y, y), torch.arange(512))


def weighted_ce(level, batch):  # lower: mean_i sigmoid(w_i) * CE_i
    xb, yb, idx = batch
    ce = nn.functional.cross_entropy(level.module(xb), yb, reduction="none")
    return (torch.sigmoid(level.weights.module(idx)).squeeze(1) * ce).mean()


def clean_ce(level, _):  # upper: CE on clean validation data
    return nn.functional.cross_entropy(level.classifier.module(x_val), y_val)


def accuracy(g):
    return {"val_acc": (g["classifier"].module(x_val).argmax(1) == y_val).float().mean()}


net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))
sgd, adam = functools.partial(torch.optim.SGD, lr=0.3), functools.partial(torch.optim.Adam, lr=0.1)
g = Graph("reweighting")
clf = g.add(Level("classifier", net, sgd, weighted_ce, DataStream(train, batch_size=128), hypergrad="darts"))
w = g.add(Level("weights", nn.Embedding(512, 1), adam, clean_ce))
g.bilevel(lower=clf, upper=w)

if __name__ == "__main__":
    print(g.describe())
    result = g.run(steps=300, device="cpu", out="runs/reweighting", validate=accuracy)
    weight = torch.sigmoid(w.module.weight.detach().squeeze(1))
    print(
        f"validation accuracy {result.best['metrics']['val_acc']:.3f}; mean weight of clean labels "
        f"{weight[~flipped].mean():.3f}, of flipped labels {weight[flipped].mean():.3f}"
    )
