"""Small models the tests share."""

import torch
from torch import nn


class TiedLM(nn.Module):
    """Embedding tied to the readout: the TP5 Table 8 case."""

    def __init__(self, width, vocab=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.relu(self.hidden(self.emb(idx))))
