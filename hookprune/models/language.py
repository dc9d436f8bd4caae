"""The word language model of PyTorch's ``word_language_model`` example, as Distiller's RNN schedules name it."""

from __future__ import annotations

import torch
from torch import nn

#: the vocabulary size of WikiText-2 as the example tokenizes it (its default corpus)
WIKITEXT2_TOKENS = 33278

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_RNN_NONLINEARITY = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}


class RNNModel(nn.Module):
    """An ``encoder`` embedding, a stacked recurrent ``rnn`` and a linear ``decoder`` over the vocabulary.

    This is the model of Zaremba et al., "Recurrent Neural Network Regularization" (2014), with optional
    weight tying (Press & Wolf, "Using the Output Embedding to Improve Language Models", 2017; Inan et al.
    2017). The LSTM's parameters are ``rnn.weight_ih_l0``, ``rnn.weight_hh_l0``, ``rnn.bias_ih_l0`` ... per
    layer. Inputs are token ids shaped ``(sequence, batch)``; ``forward`` returns the logits shaped
    ``(sequence, batch, ntoken)`` and the new hidden state.
    """

    def __init__(self, ntoken: int = WIKITEXT2_TOKENS, ninp: int = 200, nhid: int = 200, nlayers: int = 2,
                 dropout: float = 0.2, tie_weights: bool = False, rnn_type: str = "LSTM") -> None:
        super().__init__()
        self.ntoken, self.ninp, self.nhid, self.nlayers = ntoken, ninp, nhid, nlayers
        self.rnn_type = rnn_type
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        between = dropout if nlayers > 1 else 0.0
        self.rnn: nn.RNNBase
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=between)
        elif rnn_type in _RNN_NONLINEARITY:
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=_RNN_NONLINEARITY[rnn_type], dropout=between)
        else:
            raise ValueError(f"rnn_type must be 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU', not {rnn_type!r}")
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            if nhid != ninp:
                raise ValueError(f"tie_weights needs nhid == ninp (the embedding size), got {nhid} and {ninp}")
            self.decoder.weight = self.encoder.weight

    def forward(self, input: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """Logits for every position of ``input`` (token ids, ``(sequence, batch)``) and the next hidden state."""
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz: int) -> Hidden:
        """The zero hidden state for a batch of ``bsz`` sequences: ``(h, c)`` for an LSTM, ``h`` otherwise."""
        weight = next(self.parameters())
        h = weight.new_zeros(self.nlayers, bsz, self.nhid)
        return (h, weight.new_zeros(self.nlayers, bsz, self.nhid)) if self.rnn_type == "LSTM" else h


def word_lm(ntoken: int = WIKITEXT2_TOKENS, ninp: int = 200, nhid: int = 200, nlayers: int = 2,
            dropout: float = 0.2, tie_weights: bool = False, rnn_type: str = "LSTM") -> RNNModel:
    """The 2-layer LSTM word language model (Zaremba et al. 2014) at the PyTorch example's defaults.

    Distiller's large configuration is ``word_lm(ninp=1500, nhid=1500, dropout=0.65, tie_weights=True)``.
    """
    return RNNModel(ntoken, ninp, nhid, nlayers, dropout, tie_weights, rnn_type)
