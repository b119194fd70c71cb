"""1-D convolutional autoencoder over windows of consecutive events of one entity.

Input is a window x (B, W, F) that ends at the event being scored. Convolutions with "same"
padding keep the length W, and a linear bottleneck maps (C, W) to the latent code and back, so
shapes round-trip exactly for any window >= 4 without stride arithmetic.

Score of an event = mean over features of the squared error of the LAST time step of its window,
i.e. the event itself reconstructed in the context of the W-1 events before it. The per-feature
error is that step's squared error (B, F). Training reconstructs the whole window.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MIN_WINDOW = 4
MAX_WINDOW = 4_096
MAX_DECODER_BASIS = 4_096


@dataclass(frozen=True)
class ConvConfig:
    n_features: int
    window: int = 32
    channels: tuple[int, ...] = (32, 32)  # encoder conv widths; the decoder mirrors them
    latent_dim: int = 8
    kernel_size: int = 3

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if self.window < MIN_WINDOW:
            raise ValueError(f"window must be >= {MIN_WINDOW}, got {self.window}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be non-empty and >= 1, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        # Bounds for metadata read from a file. FrozenConvScorer builds an identity basis of
        # channels x (the positions the scored step depends on): its side must stay small.
        if self.window > MAX_WINDOW:
            raise ValueError(f"window must be <= {MAX_WINDOW}, got {self.window}")
        reach = max(self.channels) * (1 + len(self.channels) * (self.kernel_size // 2))
        if len(self.channels) > 8 or reach > MAX_DECODER_BASIS:
            raise ValueError(
                f"channels {self.channels} with kernel_size {self.kernel_size} are too large "
                f"(at most 8 layers, and channels x reach <= {MAX_DECODER_BASIS})"
            )


def conv_stack(sizes: list[int], kernel_size: int, last_act: bool) -> nn.Sequential:
    """Length-preserving Conv1d layers with ReLU between them (and after the last if last_act)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Conv1d(a, b, kernel_size, padding=kernel_size // 2))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvAutoencoder(nn.Module):
    kind = "conv"

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = config
        c, w, k = config.channels, config.window, config.kernel_size
        self.enc_conv = conv_stack([config.n_features, *c], k, last_act=True)
        self.enc_fc = nn.Linear(c[-1] * w, config.latent_dim)
        self.dec_fc = nn.Linear(config.latent_dim, c[-1] * w)
        self.dec_conv = conv_stack([*c[::-1], config.n_features], k, last_act=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: conv1d on the transposed view runs ~1.7x slower on a CPU than on a copy
        h = self.enc_conv(x.transpose(1, 2).contiguous())  # (B, W, F) -> (B, F, W) -> (B, C, W)
        return self.enc_fc(h.flatten(1))  # (B, C*W) -> (B, L)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dec_fc(z))  # (B, L) -> (B, C*W)
        h = h.view(z.shape[0], self.config.channels[-1], self.config.window)  # (B, C, W)
        return self.dec_conv(h).transpose(1, 2)  # (B, F, W) -> (B, W, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))  # (B, W, F) -> (B, W, F)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code used by `Scorer.encode`: (B, W, F) -> (B, L)."""
        return self.encode(x)

    def decode_last(self, z: torch.Tensor) -> torch.Tensor:
        """The last time step of decode(z), computing only the positions it depends on: (B, L) -> (B, F).

        Scoring needs only the window's last step; each length-preserving conv reaches k//2 steps back,
        so the decoder's linear layer and convs run on the last 1 + n_convs * (k//2) positions instead of
        all W (the same numbers as ``decode(z)[:, -1]``, at a fraction of the cost).
        """
        c, w, k = self.config.channels[-1], self.config.window, self.config.kernel_size
        n_convs = sum(isinstance(m, nn.Conv1d) for m in self.dec_conv)
        tail = min(w, 1 + n_convs * (k // 2))
        weight = self.dec_fc.weight.view(c, w, -1)[:, w - tail :].reshape(c * tail, -1)  # (C*T, L)
        bias = self.dec_fc.bias.view(c, w)[:, w - tail :].reshape(c * tail)
        h = torch.relu(F.linear(z, weight, bias)).view(z.shape[0], c, tail)  # (B, C, T)
        left = k // 2 if tail == w else 0  # zero padding exists only at the window's true start
        for layer in self.dec_conv:
            if isinstance(layer, nn.Conv1d):
                h = F.conv1d(
                    F.pad(h, (left, k // 2)), layer.weight, layer.bias
                )  # shrinks by k//2 - left
            else:
                h = layer(h)
        return h[:, :, -1]  # (B, F)

    def anomaly_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled windows x (B, W, F) -> (score (B,), last-step squared error (B, F))."""
        err = (x[:, -1] - self.decode_last(self.encode(x))).square_()  # (B, F)
        return err.mean(dim=1), err


def _bias(conv: nn.Conv1d) -> torch.Tensor:
    if conv.bias is None:  # conv_stack always makes them; a hand-built module might not
        raise ValueError("FrozenConvScorer needs convolutions with a bias")
    return conv.bias


class FrozenConvScorer:
    """``anomaly_score`` of a trained ConvAutoencoder, rearranged for fast CPU inference.

    The same function of the same weights (equal up to float rounding), computed differently:

    - the encoder's convolutions run as 2-D convolutions on the window in channels-last layout,
      which is (B, W, F) as the window arrives, so no transposed copy is made, and the linear
      layer's columns are permuted once to match;
    - the decoder's convolutions over the few positions the last step depends on are linear maps
      of a handful of values each, so they become small matrices, built once by running the
      layers on an identity basis: three small matrix products instead of padded convolutions.

    The weights are copied when it is built: it must be rebuilt if the model changes (the Scorer,
    whose model never changes, builds it once).
    """

    def __init__(self, model: ConvAutoencoder) -> None:
        cfg = model.config
        c, w, k = cfg.channels[-1], cfg.window, cfg.kernel_size
        with torch.no_grad():
            self._enc = [
                (
                    m.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last),
                    _bias(m).detach().clone(),
                )
                for m in model.enc_conv
                if isinstance(m, nn.Conv1d)
            ]
            self._pad = (0, k // 2)
            fc = model.enc_fc.weight.detach()
            self._enc_fc = (
                fc.view(-1, c, w).permute(0, 2, 1).reshape(fc.shape[0], w * c).contiguous(),
                model.enc_fc.bias.detach().clone(),
            )
            # The decoder's tail as affine maps on flattened (C, T) activations, with ReLU after each
            # but the last: dec_fc's rows for the last T positions, then one matrix per conv.
            convs = [m for m in model.dec_conv if isinstance(m, nn.Conv1d)]
            tail = min(w, 1 + len(convs) * (k // 2))
            weight = model.dec_fc.weight.detach().view(c, w, -1)[:, w - tail :]
            bias = model.dec_fc.bias.detach().view(c, w)[:, w - tail :]
            self._dec: list[tuple[torch.Tensor, torch.Tensor]] = [
                (weight.reshape(c * tail, -1).t().contiguous(), bias.reshape(c * tail).clone())
            ]
            # as decode_last: zero padding exists only at the window's true start
            left = k // 2 if tail == w else 0
            length = tail
            for i, conv in enumerate(convs):
                basis = torch.eye(conv.in_channels * length).view(-1, conv.in_channels, length)
                padded = F.pad(basis, (left, k // 2))
                if i == len(convs) - 1:  # only the window's last step is scored: its k inputs alone
                    padded = padded[:, :, -k:]  # (all T' steps of a wide kernel: gigabytes at load)
                out = F.conv1d(padded, conv.weight.detach())  # (N, Cout, T' or 1)
                b = _bias(conv).detach()[:, None].expand(-1, out.shape[2])
                length = out.shape[2]
                self._dec.append((out.reshape(len(basis), -1).contiguous(), b.reshape(-1).clone()))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled windows x (B, W, F) -> (score (B,), last-step squared error (B, F))."""
        h = x.transpose(1, 2).unsqueeze(2)  # (B, F, 1, W) view, channels-last in memory
        for weight, bias in self._enc:
            h = torch.relu_(F.conv2d(h, weight, bias, padding=self._pad))
        z = F.linear(h.permute(0, 2, 3, 1).flatten(1), *self._enc_fc)  # (B, L); B may be 0
        last = len(self._dec) - 1
        for i, (weight, bias) in enumerate(self._dec):
            z = torch.addmm(bias, z, weight)
            if i < last:
                z = torch.relu_(z)
        err = (x[:, -1] - z).square_()  # (B, F)
        return err.mean(dim=1), err
